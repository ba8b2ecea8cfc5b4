"""SimCLR's model (backbone + projection head) and its NT-Xent contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import FEATURE_DIM, cifar_resnet18

__all__ = ["SimCLRModel", "projection_head", "nt_xent_loss"]


def projection_head(in_dim: int = FEATURE_DIM, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """The MLP SimCLR trains through and then discards: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class SimCLRModel(nn.Module):
    """``backbone`` (a CIFAR-stem ResNet-18 by default) followed by a projection head.

    ``forward`` maps normalised float images [B, C, H, W] to projections [B, out_dim]; the features
    used downstream are ``backbone(x)`` [B, 512], before the projection.
    """

    def __init__(self, in_channels: int = 3, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = cifar_resnet18(in_channels)
        self.projector = projection_head(FEATURE_DIM, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy), SimCLR's loss.

    Args:
        z1, z2: projections [B, D] of two views; row i of ``z1`` and row i of ``z2`` are the positive pair,
            every other row of either tensor is a negative. B >= 2.
        temperature: softmax temperature tau > 0.

    Returns:
        Scalar float32 tensor: the mean over all 2B anchors of
        ``-log(exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau))`` with cosine similarities ``s``.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"nt_xent_loss needs two [B, D] tensors with B >= 2, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))  # an anchor is never its own negative
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)
