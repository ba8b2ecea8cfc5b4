"""ResNet-18 with the CIFAR stem, the backbone of the self-supervised feature extractor."""

from __future__ import annotations

from torch import nn

__all__ = ["cifar_resnet18", "FEATURE_DIM"]

#: Width of the pre-projection features a :func:`cifar_resnet18` returns.
FEATURE_DIM = 512


def cifar_resnet18(in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution, no max-pool, and
    no classifier (``fc`` is the identity).

    Args:
        in_channels: image channels (3 for RGB, 1 for grey images such as ``digits``).

    Returns:
        A module mapping float images [B, in_channels, H, W] (any H, W >= 1) to features
        [B, :data:`FEATURE_DIM`] (after global average pooling, before any projection head).
    """
    from torchvision.models import resnet18

    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net
