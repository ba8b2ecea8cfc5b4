"""The standard evaluation of a distilled set: fresh ConvNets trained on it, tested on the clean test set.

Upstream ``evaluate_synset`` (MTT, FTD, DATM, ATT), with K networks trained TOGETHER in one batched
pass (:func:`~tad_plugin.engine.convnet.forward` over ``Tensor[K, P]``) instead of one after another:

* SGD, lr = the learned ``syn_lr``, momentum 0.9, weight decay 5e-4 on every parameter;
* ``epochs + 1`` passes over the synthetic set (upstream's ``range(Epoch + 1)``: 1001 for 1000), each
  network with its own shuffle, mini-batches of ``batch_size`` (the last one smaller), DSA with one
  operation drawn per network and batch;
* after the pass with index ``epochs // 2 + 1`` (501) the lr drops x0.1 and upstream re-creates the
  optimiser, which clears the momentum buffer: so does this code;
* tested once, at the end, on the clean test set (kept resident on the device).

Labels are hard (int64 [M]) or soft (float [M, num_classes] logits; the loss is the cross-entropy
against ``softmax(logits)``, the DATM setting).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_hard_or_soft_labels
from .convnet import ConvNetConfig, forward, init_params
from .distributed import Ranks
from .dsa import DEFAULT_STRATEGY, DSA

__all__ = ["EvalResult", "Evaluator", "train_synthetic", "measure_accuracy"]


@dataclass(frozen=True)
class EvalResult:
    """Accuracies (fractions in [0, 1]) of the K evaluation networks on the test set."""

    accuracies: tuple[float, ...]
    seconds: float

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        """Population std over the networks (numpy's default, as upstream logs it)."""
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / len(self.accuracies))

    def as_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "accuracies": list(self.accuracies), "seconds": self.seconds}


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over networks of each network's mean cross-entropy: logits [K, B, C], labels [K, B](, C)."""
    k, b, c = logits.shape
    if labels.is_floating_point():
        target = labels.reshape(k * b, c).softmax(-1)
    else:
        target = labels.reshape(k * b)
    return F.cross_entropy(logits.reshape(k * b, c), target, reduction="sum") / b


def _batch_loss(net: ConvNetConfig, params: Tensor, x: Tensor, labels: Tensor, channels_last: bool) -> Tensor:
    return _loss(forward(net, params, x, channels_last=channels_last), labels)


_compiled_batch_loss: Any = None


def _loss_fn(compile: bool) -> Any:
    """The per-batch loss, optionally through ``torch.compile`` (one cache for the process)."""
    global _compiled_batch_loss
    if not compile:
        return _batch_loss
    if _compiled_batch_loss is None:
        _compiled_batch_loss = torch.compile(_batch_loss, dynamic=False)
    return _compiled_batch_loss


def train_synthetic(net: ConvNetConfig, images: Tensor, labels: Tensor, lr: float, *, num_nets: int = 5,
                    epochs: int = 1000, batch_size: int = 256, momentum: float = 0.9,
                    weight_decay: float = 5e-4, dsa: DSA | None = None, generator: torch.Generator | None = None,
                    channels_last: bool = False, compile: bool = False, progress: bool = True,
                    init: Tensor | None = None) -> Tensor:
    """Train ``num_nets`` fresh ConvNets together on a (synthetic) set; return their parameters [K, P].

    Args:
        images: float [M, C, H, W] in model-input space, on the device to train on.
        labels: int64 [M] or float logits [M, num_classes], same device.
        lr: initial learning rate (upstream: the learned ``syn_lr``), > 0.
        dsa: augmentation (None = none; upstream always uses DSA here).
        generator: on the images' device; drives initialisation and shuffles (None = global RNG).
        compile: run forward + loss through ``torch.compile`` (fuses norm/ReLU/pool; the first call
            compiles for tens of seconds, later evaluations of the same shapes reuse it).
        init: float [K, P] starting parameters (not modified) instead of fresh ones; None = fresh nets
            drawn with ``generator``.
    """
    if images.dim() != 4 or not images.is_floating_point() or tuple(images.shape[1:]) != (
            net.in_channels, *net.image_size):
        raise ValueError(f"images must be float [M, {net.in_channels}, {net.image_size[0]}, "
                         f"{net.image_size[1]}], got {images.dtype} {tuple(images.shape)}")
    check_hard_or_soft_labels(labels, images.shape[0], net.num_classes)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the evaluation lr must be a positive number, got {lr} (a NaN or negative learned "
                         f"syn_lr means distillation diverged: lower lr_lr / lr_img)")
    dev, m, k = images.device, images.shape[0], num_nets
    if init is not None and tuple(init.shape) != (k, net.num_params):
        raise ValueError(f"init must be [num_nets={k}, P={net.num_params}], got {tuple(init.shape)}")
    params = init_params(net, k, generator=generator, device=dev) if init is None else init.detach().to(dev).clone()
    buf = torch.zeros_like(params)
    decay_after = epochs // 2 + 1
    loss_fn = _loss_fn(compile)
    for ep in tqdm(range(epochs + 1), desc="evaluate", disable=not progress, leave=False):
        order = torch.rand(k, m, generator=generator, device=dev).argsort(1)
        for s in range(0, m, batch_size):
            idx = order[:, s:s + batch_size]  # [K, b]
            b = idx.shape[1]
            x = images[idx.reshape(-1)]
            if dsa is not None:
                x = dsa(x, groups=k)
            p = params.detach().requires_grad_()
            (g,) = torch.autograd.grad(loss_fn(net, p, x.view(k, b, *x.shape[1:]), labels[idx], channels_last), p)
            with torch.no_grad():
                g.add_(params, alpha=weight_decay)
                buf.mul_(momentum).add_(g)
                params.sub_(buf, alpha=lr)
        if ep == decay_after:
            lr *= 0.1
            buf.zero_()
    return params


@torch.no_grad()
def measure_accuracy(net: ConvNetConfig, params: Tensor, test_x: Tensor, test_y: Tensor,
                     batch_size: int | None = None, channels_last: bool = False) -> Tensor:
    """Fraction correct per network: params [K, P], test_x float [T, C, H, W], test_y int64 [T] -> float [K].

    ``batch_size`` None = 8192 // K images per chunk (the first feature map of K nets at once is
    K * width * H * W floats per image, 26 GB for K = 20 and 2500 CIFAR images).
    """
    if batch_size is None:
        batch_size = max(32, 8192 // params.shape[0])
    correct = torch.zeros(params.shape[0], dtype=torch.int64, device=params.device)
    for s in range(0, test_x.shape[0], batch_size):
        logits = forward(net, params, test_x[s:s + batch_size], channels_last=channels_last)
        correct += (logits.argmax(-1) == test_y[s:s + batch_size]).sum(1)
    return correct.double() / test_x.shape[0]


class Evaluator:
    """Holds the clean test set on the device and evaluates synthetic sets with the standard protocol.

    Args:
        net: network shape.
        test_x: float [T, C, H, W] test images in model-input space (moved to ``device`` once).
        test_y: int64 [T] clean test labels.
        num_nets, epochs, batch_size, momentum, weight_decay: the protocol (upstream 5, 1000, 256, 0.9, 5e-4).
        dsa_strategy: DSA strategy ("" / "none" disables it).
        seed: base seed; evaluation number i uses seed + i, so repeated evaluations differ but the run
            is reproducible.
        compile: see :func:`train_synthetic`.
        ranks: several processes share the nets (net i on rank ``i % W``; in evaluation number i rank r
            seeds its nets with ``seed + i + 1_000_003 * r``, so one process draws exactly as before);
            every rank gets all accuracies, in net order (``seconds``: the slowest rank). None = one process.
    """

    def __init__(self, net: ConvNetConfig, test_x: Tensor, test_y: Tensor, *, num_nets: int = 5,
                 epochs: int = 1000, batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
                 dsa_strategy: str = DEFAULT_STRATEGY, seed: int = 0, device: torch.device | str | None = None,
                 channels_last: bool = False, compile: bool = False, progress: bool = True,
                 ranks: Ranks | None = None) -> None:
        if not test_x.is_floating_point() or tuple(test_x.shape[1:]) != (net.in_channels, *net.image_size):
            raise ValueError(f"test_x must be float model input [T, {net.in_channels}, {net.image_size[0]}, "
                             f"{net.image_size[1]}] (apply the Preprocessor), got {test_x.dtype} "
                             f"{tuple(test_x.shape)}")
        check_hard_or_soft_labels(test_y, test_x.shape[0], net.num_classes)
        if test_y.is_floating_point():
            raise ValueError("test labels must be hard int64 labels")
        if num_nets < 1 or epochs < 0 or batch_size < 1:
            raise ValueError("num_nets and batch_size must be >= 1 and epochs >= 0")
        self.device = torch.device(device) if device is not None else test_x.device
        self.net = net
        self.test_x, self.test_y = test_x.to(self.device), test_y.to(self.device)
        self.num_nets, self.epochs, self.batch_size = num_nets, epochs, batch_size
        self.momentum, self.weight_decay = momentum, weight_decay
        self.dsa_strategy, self.seed = dsa_strategy, seed
        self.ranks = ranks or Ranks()
        self.channels_last, self.compile, self.progress = channels_last, compile, progress and self.ranks.is_main
        self.calls = 0

    def __call__(self, images: Tensor, labels: Tensor, lr: float) -> EvalResult:
        """Train ``num_nets`` nets on (images, labels) at ``lr`` and test them; see :func:`train_synthetic`."""
        return self.run(images, labels, lr)[0]

    def run(self, images: Tensor, labels: Tensor, lr: float, init: Tensor | None = None
            ) -> tuple[EvalResult, Tensor]:
        """As calling the evaluator, and also return the trained parameters float [K, P]; ``init``
        (float [K, P]) continues training those networks instead of fresh ones. With several ranks both
        are this rank's nets only (K = its share of ``num_nets``, nets i = rank, rank + W, ...), so the
        parameters one call returns are the ``init`` of the same rank's next call."""
        seed = self.seed + self.calls + 1_000_003 * self.ranks.rank
        self.calls += 1
        w = self.ranks.world_size
        mine = len(self.ranks.share(range(self.num_nets)))
        accs, seconds, params = self._train_and_test(images, labels, lr, seed, mine, init)
        parts = self.ranks.gather((accs, seconds))
        accs = tuple(parts[i % w][0][i // w] for i in range(self.num_nets))
        return EvalResult(accs, max(sec for _, sec in parts)), params

    def _train_and_test(self, images: Tensor, labels: Tensor, lr: float, seed: int, num_nets: int,
                        init: Tensor | None) -> tuple[tuple[float, ...], float, Tensor]:
        if num_nets == 0:
            return (), 0.0, torch.zeros(0, self.net.num_params, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        dsa = DSA(self.dsa_strategy, seed=seed, device=self.device) if self.dsa_strategy not in ("", "none") else None
        start = time.perf_counter()
        params = train_synthetic(self.net, images.detach().to(self.device), labels.detach().to(self.device),
                                 float(lr), num_nets=num_nets, epochs=self.epochs,
                                 batch_size=self.batch_size, momentum=self.momentum,
                                 weight_decay=self.weight_decay, dsa=dsa, generator=gen,
                                 channels_last=self.channels_last, compile=self.compile,
                                 progress=self.progress, init=init)
        acc = measure_accuracy(self.net, params, self.test_x, self.test_y, channels_last=self.channels_last)
        return tuple(float(a) for a in acc.cpu()), time.perf_counter() - start, params
