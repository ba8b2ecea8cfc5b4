"""GSAM (surrogate-gap guided sharpness-aware minimisation) as a ``torch.optim.Optimizer``.

FTD and DATM train their experts with GSAM (Zhuang et al., ICLR 2022). One :meth:`GSAM.step` does:

1. ``g = grad L(w)`` (the closure's first evaluation);
2. perturb ``w <- w + e`` with ``e = rho * g / ||g||``; in the *adaptive* variant the norm is taken of
   ``|w| * g`` and the perturbation is scaled by ``w**2``;
3. ``g' = grad L(w + e)`` (the closure's second evaluation);
4. decompose: ``g' <- g' - alpha * (g - cos(g, g') * ||g|| * g' / ||g'||)``, i.e. remove ``alpha``
   times the part of the old gradient orthogonal to ``g'``;
5. restore ``w`` and let the base optimiser step with ``g'``.

``rho`` is constant (FTD and DATM schedule it between equal bounds). The closure must zero the
gradients, compute the loss, call ``backward()`` and return the loss; it is evaluated twice per step,
so the loss it computes must be pure (TAD's ``expert_loss`` is).

``independent_rows=True`` treats every row of each parameter (shape [E, ...]) as a separate model, so
E experts stored as one flat tensor [E, P] each get their own norms and cosine, exactly as E
separate optimisers would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["GSAM"]


class GSAM(torch.optim.Optimizer):
    """GSAM wrapped around a base optimiser.

    Args:
        params: the parameters (as for any optimiser).
        base_optimizer: an optimiser class (e.g. ``torch.optim.SGD``), built over the same param groups
            with ``base_kwargs``.
        rho: perturbation radius (FTD/DATM: 0.01 in their scripts).
        alpha: weight of the gradient decomposition (FTD Table 7: 0.3 or 1; DATM 0.3).
        adaptive: the adaptive (ASAM-style) perturbation, as upstream uses.
        independent_rows: per-row norms for stacked models (see the module docstring).
        eps: added to norms before dividing.
        **base_kwargs: arguments of the base optimiser (``lr``, ``momentum``, ``weight_decay`` ...).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
                 base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05, alpha: float = 0.4,
                 adaptive: bool = True, independent_rows: bool = False, eps: float = 1e-12,
                 **base_kwargs: Any) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        super().__init__(params, dict(rho=rho, alpha=alpha, adaptive=adaptive, **base_kwargs))
        self.independent_rows = independent_rows
        self.eps = eps
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        if independent_rows:
            rows = {p.shape[0] for g in self.param_groups for p in g["params"]}
            if len(rows) != 1 or any(p.dim() < 1 for g in self.param_groups for p in g["params"]):
                raise ValueError("independent_rows=True needs every parameter to have the same leading "
                                 f"(model) dimension; got leading sizes {sorted(rows)}")

    def _dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """Sum of elementwise products: a scalar, or [E] per row with independent_rows."""
        if self.independent_rows:
            return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))  # type: ignore[return-value]
        return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]

    def _expand(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (like.dim() - 1))) if self.independent_rows else v

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One GSAM step; ``closure`` is required and returns the loss at the current weights."""
        if closure is None:
            raise ValueError("GSAM needs a closure that zeroes the gradients, computes the loss, calls "
                             "backward() and returns the loss (it is evaluated twice per step)")
        closure = torch.enable_grad()(closure)
        loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        groups = [g for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        old_g = [p.grad.detach().clone() for p in params]
        scaled = [(p.abs() * gr if grp["adaptive"] else gr) for p, gr, grp in zip(params, old_g, groups)]
        norm = self._dot(scaled, scaled).sqrt()
        perturbations = []
        for p, gr, grp in zip(params, old_g, groups):
            e_w = gr * self._expand(grp["rho"] / (norm + self.eps), p)
            if grp["adaptive"]:
                e_w = e_w * p.pow(2)
            p.add_(e_w)
            perturbations.append(e_w)
        closure()
        new_g = [p.grad.detach() for p in params]
        old_norm = self._dot(old_g, old_g).sqrt()
        new_norm = self._dot(new_g, new_g).sqrt()
        cosine = self._dot(old_g, new_g) / (old_norm * new_norm + self.eps)
        for p, og, ng, e_w, grp in zip(params, old_g, new_g, perturbations, groups):
            vertical = og - self._expand(cosine * old_norm / (new_norm + self.eps), p) * ng
            p.grad.add_(vertical, alpha=-grp["alpha"])
            p.sub_(e_w)
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)
