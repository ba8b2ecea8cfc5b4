"""ZCA whitening, numerically the transform of kornia's ``ZCAWhitening(eps=0.1, compute_inv=True)``.

Kornia (``kornia.enhance.zca``), which the trajectory-matching code bases fit on all training images:
flatten each image to D = C*H*W features, ``mu`` = feature mean, ``Sigma`` = the **unbiased**
covariance ``(X - mu)^T (X - mu) / (N - 1)``, ``U, S = svd(Sigma)``,
``T = U diag(1 / sqrt(S + eps)) U^T``, ``T_inv = U diag(sqrt(S + eps)) U^T``;
``transform(x) = (x - mu) T`` and ``inverse(y) = (y + mu T) T_inv``.

Here the covariance is accumulated and decomposed in float64 (``eigh`` of the symmetric matrix; the
absolute eigenvalues equal the singular values ``svd`` returns), then stored as float32, so fitting
50k x 3072 on a GPU takes about a second.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ZCA"]


class ZCA:
    """ZCA whitening fitted on float images [N, C, H, W].

    Args:
        eps: added to the eigenvalues before the inverse square root (upstream 0.1).
    """

    def __init__(self, eps: float = 0.1) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.mean: Tensor | None = None  # float32 [1, D]
        self.matrix: Tensor | None = None  # float32 [D, D]
        self.inverse_matrix: Tensor | None = None  # float32 [D, D]
        self.shape: tuple[int, int, int] | None = None  # (C, H, W)

    @property
    def fitted(self) -> bool:
        return self.matrix is not None

    @torch.no_grad()
    def fit(self, x: Tensor, chunk: int = 8192) -> ZCA:
        """Fit on float images [N, C, H, W] (N >= 2) on their device; returns self."""
        if x.dim() != 4 or not x.is_floating_point() or x.shape[0] < 2:
            raise ValueError(f"ZCA.fit needs float images [N >= 2, C, H, W], got {x.dtype} {tuple(x.shape)}")
        n, d = x.shape[0], x[0].numel()
        flat = x.reshape(n, d)
        mean = flat.sum(0, dtype=torch.float64) / n
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for i in range(0, n, chunk):
            c = flat[i:i + chunk].double() - mean
            cov.addmm_(c.T, c)
        cov /= n - 1
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.abs()
        self.matrix = ((evecs * torch.rsqrt(evals + self.eps)) @ evecs.T).float()
        self.inverse_matrix = ((evecs * torch.sqrt(evals + self.eps)) @ evecs.T).float()
        self.mean = mean.float().unsqueeze(0)
        self.shape = tuple(x.shape[1:])  # type: ignore[assignment]
        return self

    def _check(self, x: Tensor) -> None:
        if not self.fitted:
            raise RuntimeError("ZCA is not fitted: call fit(train_images) or load a state_dict first")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"ZCA was fitted on images {self.shape}, got {tuple(x.shape[1:])}")

    def transform(self, x: Tensor) -> Tensor:
        """Whiten float [N, C, H, W] -> float [N, C, H, W] (differentiable w.r.t. x)."""
        self._check(x)
        m, t = self.mean.to(x.device), self.matrix.to(x.device)  # type: ignore[union-attr]
        return ((x.reshape(x.shape[0], -1) - m) @ t).reshape(x.shape)

    def inverse(self, x: Tensor) -> Tensor:
        """Undo :meth:`transform`: whitened [N, C, H, W] -> the original pixel space."""
        self._check(x)
        m, t = self.mean.to(x.device), self.matrix.to(x.device)  # type: ignore[union-attr]
        ti = self.inverse_matrix.to(x.device)  # type: ignore[union-attr]
        return ((x.reshape(x.shape[0], -1) + m @ t) @ ti).reshape(x.shape)

    def to(self, device: torch.device | str) -> ZCA:
        """Move the fitted matrices to ``device`` (in place); returns self."""
        if self.fitted:
            self.mean, self.matrix = self.mean.to(device), self.matrix.to(device)  # type: ignore[union-attr]
            self.inverse_matrix = self.inverse_matrix.to(device)  # type: ignore[union-attr]
        return self

    def state_dict(self) -> dict[str, Any]:
        """Tensors (on the CPU) and numbers only, loadable with ``torch.load(weights_only=True)``."""
        if not self.fitted:
            raise RuntimeError("ZCA is not fitted; nothing to save")
        return {"eps": self.eps, "shape": list(self.shape), "mean": self.mean.cpu(),  # type: ignore[arg-type,union-attr]
                "matrix": self.matrix.cpu(), "inverse_matrix": self.inverse_matrix.cpu()}  # type: ignore[union-attr]

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ZCA:
        try:
            z = cls(float(state["eps"]))
            z.shape = tuple(int(v) for v in state["shape"])  # type: ignore[assignment]
            z.mean, z.matrix, z.inverse_matrix = state["mean"], state["matrix"], state["inverse_matrix"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a ZCA state_dict ({exc!r}); save one with ZCA.state_dict()") from exc
        d = 1
        for v in z.shape:  # type: ignore[union-attr]
            d *= v
        if z.mean.shape != (1, d) or z.matrix.shape != (d, d) or z.inverse_matrix.shape != (d, d):
            raise ValueError(f"corrupt ZCA state_dict: matrices do not match image shape {z.shape}")
        return z
