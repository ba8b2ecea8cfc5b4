"""LARS: SGD with momentum and a layer-wise trust ratio (You et al., 2017), as in SimCLR's recipe.

For every parameter tensor ``w`` (one "layer") of a non-excluded group, with gradient ``g``, weight decay
``wd``, trust coefficient ``eta``, momentum ``m`` and learning rate ``lr``::

    trust = eta * ||w|| / (||g|| + wd * ||w||)      (1 where ||w|| == 0 or ||g|| == 0)
    d     = trust * (g + wd * w)
    buf   = m * buf + d                              (buf starts at zero, so buf = d on the first step)
    w    -= lr * buf

Parameter groups with ``lars_exclude=True`` (by convention BatchNorm weights/biases and all biases, see
:func:`lars_param_groups`) take plain SGD momentum steps: ``d = g``, no trust ratio and no weight decay.
The learning rate stays outside the momentum buffer (PyTorch SGD's convention), so a schedule that changes
``group["lr"]`` between steps scales the whole update at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["LARS", "lars_param_groups"]


def lars_param_groups(module: torch.nn.Module) -> list[dict[str, Any]]:
    """Split ``module``'s trainable parameters into ``[{"params": adapted}, {"params": excluded,
    "lars_exclude": True}]``: tensors with at most one dimension (biases, BatchNorm/LayerNorm weights) are
    excluded from the trust ratio and the weight decay; conv and linear weights are adapted."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() > 1]},
            {"params": [p for p in params if p.dim() <= 1], "lars_exclude": True}]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum (the update is in the module docstring).

    Args:
        params: tensors or parameter groups; a group may set ``lars_exclude=True`` (plain SGD momentum, no
            weight decay) and override ``lr``, ``momentum``, ``weight_decay`` and ``eta``.
        lr: global learning rate (> 0); SimCLR scales it with the batch, e.g. ``0.3 * batch / 256``.
        momentum: in [0, 1).
        weight_decay: >= 0; enters both the update and the trust ratio's denominator.
        eta: trust coefficient (> 0); 0.001 in SimCLR and the LARS paper.

    The state per parameter is ``momentum_buffer`` (same shape and dtype as the parameter). Parameters
    without a gradient are skipped. The step performs no host synchronisation (no ``.item()``).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float,
                 momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3) -> None:
        if not lr > 0 or not 0 <= momentum < 1 or not weight_decay >= 0 or not eta > 0:
            raise ValueError(f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0 and eta > 0; got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            updates: Sequence[torch.Tensor]
            if group["lars_exclude"]:
                updates = grads
            else:
                wd, eta = group["weight_decay"], group["eta"]
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                usable = (w_norm > 0) & (g_norm > 0)
                trust = torch.where(usable, eta * w_norm / (g_norm + wd * w_norm), 1.0)
                updates = torch._foreach_add(grads, params, alpha=wd)
                torch._foreach_mul_(updates, list(trust.to(grads[0].dtype).unbind()))
            buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
