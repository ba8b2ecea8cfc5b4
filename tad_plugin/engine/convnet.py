"""The ConvNet of the trajectory-matching papers, as a module and as a batched functional forward.

Architecture (upstream ``networks.ConvNet`` with ``instancenorm``/``relu``/``avgpooling``)::

    depth x [Conv3x3(width, padding 1) -> GroupNorm(width, width, affine) -> ReLU -> AvgPool2d(2)]
    -> flatten -> Linear(width * h * w, num_classes)

``GroupNorm(width, width)`` is per-channel instance normalisation (no running statistics, so train
and eval mode compute the same function).

Differences from upstream, both only for inputs upstream never uses with this network:

* upstream pads the first convolution by 3 (not 1) when the input has one channel (a trick that
  turns 28x28 MNIST into 32x32 feature maps); here every convolution pads by 1;
* for images smaller than ``2 ** depth`` pixels (scikit-learn's 8x8 digits with depth 4, say) a
  layer whose input is already 1 pixel high or wide does not pool (the pooling slot holds an
  ``nn.Identity`` so that module indices, hence ``state_dict`` keys, stay upstream's).

All parameters of one network form a flat float32 vector ``[P]`` in upstream's
``net.parameters()`` order (per layer: conv.weight, conv.bias, norm.weight, norm.bias; then
classifier.weight, classifier.bias), so trajectories export to upstream's ``replay_buffer`` lists.
:func:`forward` runs ``E`` independent networks, given as ``Tensor[E, P]``, in one batched pass
(grouped convolutions): the hot path of expert training, distillation and evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_tensors, is_integer

if TYPE_CHECKING:
    from ..data import ImageDataset

__all__ = ["ConvNetConfig", "ConvNet", "init_params", "flatten", "unflatten", "forward", "load_flat"]

_NORM_EPS = 1e-5  # nn.GroupNorm's default, as upstream


@dataclass(frozen=True)
class ConvNetConfig:
    """Shape of a ConvNet.

    Attributes:
        in_channels: image channels (3 for CIFAR, 1 for digits).
        num_classes: output logits.
        image_size: (height, width) of the input images.
        width: channels of every convolution (upstream 128).
        depth: number of conv blocks (upstream ConvNetD3 for 32 px, ConvNetD4 for 64 px).
    """

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    width: int = 128
    depth: int = 3

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "depth"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValueError(f"ConvNetConfig.{name} must be an integer >= 1, got {value!r}")
        if (len(self.image_size) != 2 or not all(is_integer(v) for v in self.image_size)
                or min(self.image_size) < 1):
            raise ValueError(f"ConvNetConfig.image_size must be (height, width), integers >= 1, got {self.image_size}")
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))

    @classmethod
    def for_dataset(cls, ds: ImageDataset, width: int = 128, depth: int | None = None) -> ConvNetConfig:
        """The upstream network for ``ds``: depth 3 up to 32 px, 4 for 64 px, 5 for 128 px."""
        h, w = ds.image_size
        if depth is None:
            depth = max(3, math.ceil(math.log2(max(h, w))) - 2)
        return cls(ds.channels, ds.num_classes, (h, w), width=width, depth=depth)

    @property
    def pools(self) -> tuple[bool, ...]:
        """Per layer: whether it ends with AvgPool2d(2) (False once the map is 1 px high or wide)."""
        h, w = self.image_size
        out = []
        for _ in range(self.depth):
            p = min(h, w) >= 2
            out.append(p)
            if p:
                h, w = h // 2, w // 2
        return tuple(out)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the last feature map, the classifier's input is ``width * h * w``."""
        h, w = self.image_size
        for p in self.pools:
            if p:
                h, w = h // 2, w // 2
        return h, w

    @property
    def num_features(self) -> int:
        h, w = self.feature_size
        return self.width * h * w

    @property
    def param_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the parameters in upstream ``net.parameters()`` order."""
        shapes: list[tuple[int, ...]] = []
        c = self.in_channels
        for _ in range(self.depth):
            shapes += [(self.width, c, 3, 3), (self.width,), (self.width,), (self.width,)]
            c = self.width
        shapes += [(self.num_classes, self.num_features), (self.num_classes,)]
        return tuple(shapes)

    @property
    def num_params(self) -> int:
        """P, the length of the flat parameter vector (320,010 for CIFAR-10 at width 128, depth 3)."""
        return sum(math.prod(s) for s in self.param_shapes)


class ConvNet(nn.Module):
    """The upstream ConvNet as an ``nn.Module`` (``features`` Sequential + ``classifier`` Linear).

    Input float [B, C, H, W] with (H, W) = ``cfg.image_size``; output logits [B, num_classes].
    """

    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c = cfg.in_channels
        for pool in cfg.pools:
            layers += [
                nn.Conv2d(c, cfg.width, kernel_size=3, padding=1),
                nn.GroupNorm(cfg.width, cfg.width, eps=_NORM_EPS, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2) if pool else nn.Identity(),
            ]
            c = cfg.width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cfg.num_features, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def _init_specs(cfg: ConvNetConfig) -> list[float]:
    """Per parameter, PyTorch's default init: b > 0 means U(-b, b); -1.0 means ones, 0.0 zeros."""
    out: list[float] = []
    c = cfg.in_channels
    for _ in range(cfg.depth):
        b = 1.0 / math.sqrt(c * 9)  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        out += [b, b, -1.0, 0.0]  # conv weight, conv bias, norm weight = 1, norm bias = 0
        c = cfg.width
    b = 1.0 / math.sqrt(cfg.num_features)
    return out + [b, b]


def init_params(cfg: ConvNetConfig, n_models: int, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """Fresh parameters of ``n_models`` networks: float32 ``[n_models, P]`` on ``device``.

    Same distribution as ``ConvNet(cfg)``'s default init (conv/linear weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), norm weights 1, norm biases 0). ``generator`` makes it
    reproducible (its device wins over ``device``); None uses the global RNG.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    if generator is not None:
        device = generator.device
    out = torch.empty(n_models, cfg.num_params, device=device)
    offset = 0
    for shape, spec in zip(cfg.param_shapes, _init_specs(cfg)):
        n = math.prod(shape)
        seg = out[:, offset:offset + n]
        if spec > 0:
            seg.uniform_(-spec, spec, generator=generator)
        else:
            seg.fill_(1.0 if spec < 0 else 0.0)
        offset += n
    return out


def flatten(module: nn.Module) -> Tensor:
    """The module's parameters as one detached float32 vector [P] in ``parameters()`` order."""
    return torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])


def unflatten(cfg: ConvNetConfig, flat: Tensor) -> list[Tensor]:
    """Split a flat vector [P] (or a batch [E, P]) into views in upstream parameter order.

    With ``flat`` of shape [E, P] every tensor has a leading E dimension. For a 1-D ``flat`` (or E = 1)
    they are views sharing its storage; for E > 1 the reshape copies. Either way autograd flows to ``flat``.
    """
    if flat.shape[-1] != cfg.num_params or flat.dim() not in (1, 2):
        raise ValueError(f"expected a parameter vector [{cfg.num_params}] or [E, {cfg.num_params}] for "
                         f"{cfg}, got shape {tuple(flat.shape)}")
    lead = tuple(flat.shape[:-1])
    # torch.split, not slicing: its backward is ONE concatenation, where each slice's backward would
    # allocate, fill and accumulate a full [P] gradient (dozens of extra kernels per unrolled step).
    parts = torch.split(flat, [math.prod(s) for s in cfg.param_shapes], dim=-1)
    return [p.reshape(lead + s) for p, s in zip(parts, cfg.param_shapes)]


@torch.no_grad()
def load_flat(module: ConvNet, flat: Tensor) -> ConvNet:
    """Copy a flat vector [P] into ``module``'s parameters (in place); returns the module."""
    for p, v in zip(module.parameters(), unflatten(module.cfg, flat)):
        p.copy_(v)
    return module


def forward(cfg: ConvNetConfig, params: Tensor, x: Tensor, channels_last: bool = False) -> Tensor:
    """Logits of E independent ConvNets in one batched pass.

    Args:
        cfg: the network shape.
        params: float [E, P], one flat parameter vector per network (E = 1 for the distillation
            student). Differentiable (also twice: the unrolled student uses ``create_graph``).
        x: float [E, B, C, H, W] (network e sees batch x[e]) or [B, C, H, W] (the same batch for
            every network, e.g. the test set). Differentiable.
        channels_last: run the convolutions in NHWC memory layout (faster on tensor cores for
            some sizes).

    Returns:
        float [E, B, num_classes]; out[e] equals ``ConvNet`` with parameters params[e] on x[e].
    """
    check_tensors("convnet.forward", params=params, x=x)
    if params.dim() != 2 or params.shape[1] != cfg.num_params:
        raise ValueError(f"params must be [E, {cfg.num_params}] for {cfg}, got {tuple(params.shape)}")
    e = params.shape[0]
    img = (cfg.in_channels, *cfg.image_size)
    shared = x.dim() == 4
    if (shared and tuple(x.shape[1:]) != img) or (not shared and (x.dim() != 5 or tuple(x.shape[2:]) != img
                                                                   or x.shape[0] != e)):
        raise ValueError(f"x must be [{e}, B, {img[0]}, {img[1]}, {img[2]}] or [B, {img[0]}, {img[1]}, "
                         f"{img[2]}], got {tuple(x.shape)}")
    ws = unflatten(cfg, params)
    b = x.shape[0] if shared else x.shape[1]
    if shared:
        h = x
    elif e == 1:
        h = x[0]
    else:  # [E, B, C, H, W] -> [B, E*C, H, W]: network e owns channel block e
        h = x.transpose(0, 1).reshape(b, e * cfg.in_channels, *cfg.image_size)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    for d, pool in enumerate(cfg.pools):
        cw, cb, nw, nb = ws[4 * d: 4 * d + 4]
        groups = 1 if (d == 0 and shared) else e
        h = F.conv2d(h, cw.reshape(e * cfg.width, *cw.shape[2:]), cb.reshape(-1), padding=1, groups=groups)
        h = F.group_norm(h, e * cfg.width, nw.reshape(-1), nb.reshape(-1), _NORM_EPS)
        h = F.relu(h)
        if pool:
            h = F.avg_pool2d(h, 2)
    feat = h.reshape(b, e, cfg.num_features).transpose(0, 1)  # [E, B, F]
    lw, lb = ws[-2], ws[-1]  # [E, K, F], [E, K]
    return torch.baddbmm(lb.unsqueeze(1), feat, lw.transpose(1, 2))
