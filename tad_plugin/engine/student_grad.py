"""The unrolled student's gradient written out as a forward computation (an explicit backward pass).

Trajectory matching updates the student ``w <- w - syn_lr * grad_w CE(student(x; w), y)`` and then
differentiates the whole unrolled chain with respect to the images and ``syn_lr``. The usual way
(upstream's, and :class:`~tad_plugin.engine.matching.TrajectoryMatcher`'s default) asks autograd for
the inner gradient with ``create_graph=True``, so the final backward is a double backward: composite
second-derivative formulas, thousands of small elementwise kernels per iteration, and ``torch.compile``
cannot trace it.

:func:`student_grad` computes the same gradient by running the ConvNet's backward pass by hand
(softmax - target, the linear layer, average-pool, ReLU, instance norm and convolution backward).
The result is an ordinary differentiable function of ``(w, x, target)``: the unrolled loop then needs
only first-order autograd through it, and it can be compiled like any forward function. Values equal
``torch.autograd.grad`` up to rounding (tested in float64, first and second order).

:func:`student_grad_recomputing_elementwise` is the same function under selective checkpointing: the final
backward keeps each step's convolution and matrix-product outputs and recomputes only the elementwise work
around them (normalisation, ReLU, pooling, softmax), which needs a fraction of the memory of keeping
everything and far less arithmetic than recomputing the whole step.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .convnet import _NORM_EPS, ConvNetConfig, unflatten

__all__ = ["student_grad", "student_grad_recomputing_elementwise", "INNER_GRADS", "COMPILE_MODES",
           "RECOMPUTE_STEPS", "is_recompute_choice"]

#: How the unrolled student's gradient is taken (MatchingConfig.inner_grad): autograd's double backward,
#: :func:`student_grad`, or :func:`student_grad` under torch.compile.
INNER_GRADS = ("autograd", "explicit", "compiled")

#: ``torch.compile`` modes for the "compiled" route (MatchingConfig.compile_mode).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

#: What the final backward recomputes of each unrolled step (MatchingConfig.recompute_steps): nothing
#: (False: every step's graph is kept), the whole step (True), or its elementwise work only ("elementwise").
RECOMPUTE_STEPS = (False, True, "elementwise")


def is_recompute_choice(value: object) -> bool:
    """Whether ``value`` is one of :data:`RECOMPUTE_STEPS` (a bool, not 1 or 0, which equal True and False)."""
    return isinstance(value, bool) or value == "elementwise"

#: The operations whose outputs :func:`student_grad_recomputing_elementwise` keeps: the arithmetic-heavy ones.
_KEPT_OPS = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default,
                       torch.ops.aten.mm.default, torch.ops.aten.addmm.default})


def _conv_backward(dz: Tensor, h: Tensor, weight: Tensor, need_input: bool) -> tuple[Tensor | None, Tensor]:
    """(d input or None, d weight) of ``F.conv2d(h, weight, padding=1)`` for the output gradient ``dz``."""
    d_in, d_w, _ = torch.ops.aten.convolution_backward(dz, h, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                       [need_input, True, False])
    return d_in, d_w


def student_grad(cfg: ConvNetConfig, w: Tensor, x: Tensor, target: Tensor, scale: float = 1.0) -> Tensor:
    """``grad_w`` of the student's mean cross-entropy, as a differentiable function of all inputs.

    Args:
        cfg: the network shape.
        w: float [1, P], the student's flat parameters.
        x: float [B, C, H, W], the (augmented) synthetic batch.
        target: int64 [B] class indices, or float [B, num_classes] target probabilities (soft labels
            after their softmax).
        scale: multiplies the loss (a rank's share of a batch split over processes).

    Returns:
        float [1, P]: equals ``torch.autograd.grad(scale * F.cross_entropy(forward(cfg, w, x[None])[0],
        target), w, create_graph=True)[0]``, and so does its derivative with respect to ``w``, ``x`` and a
        float ``target``.
    """
    if w.dim() != 2 or w.shape[0] != 1:
        raise ValueError(f"student_grad takes one network's parameters [1, P], got {tuple(w.shape)}")
    ws = [p[0] for p in unflatten(cfg, w)]
    b = x.shape[0]
    h = x
    saved = []
    for d, pool in enumerate(cfg.pools):
        cw, cb, nw, nb = ws[4 * d: 4 * d + 4]
        z = F.conv2d(h, cw, cb, padding=1)
        var, mean = torch.var_mean(z, (2, 3), correction=0, keepdim=True)
        r = (var + _NORM_EPS).rsqrt()
        xhat = (z - mean) * r
        a = torch.addcmul(nb.view(1, -1, 1, 1), xhat, nw.view(1, -1, 1, 1))
        act = F.relu(a)
        saved.append((h, xhat, r, act, pool))
        h = F.avg_pool2d(act, 2) if pool else act
    feat = h.reshape(b, -1)
    lw, lb = ws[-2], ws[-1]
    logits = torch.addmm(lb, feat, lw.t())
    probs = logits.softmax(-1)
    onehot = F.one_hot(target, cfg.num_classes).to(probs.dtype) if not target.is_floating_point() else target
    dlogits = (probs - onehot) * (scale / b)
    grads: list[Tensor] = [dlogits.t() @ feat, dlogits.sum(0)]
    dh = (dlogits @ lw).view_as(h)
    for d in reversed(range(cfg.depth)):
        h_in, xhat, r, act, pool = saved[d]
        nw = ws[4 * d + 2]
        dact = torch.ops.aten.avg_pool2d_backward(dh, act, [2, 2], [2, 2], [0, 0], False, True, None) if pool else dh
        da = torch.ops.aten.threshold_backward(dact, act, 0)  # ReLU's own backward
        d_nw = (da * xhat).sum((0, 2, 3))
        d_nb = da.sum((0, 2, 3))
        dxhat = da * nw.view(1, -1, 1, 1)
        c = (dxhat * xhat).mean((2, 3), keepdim=True)
        dz = torch.addcmul(dxhat - dxhat.mean((2, 3), keepdim=True), xhat, c, value=-1.0) * r
        d_in, d_cw = _conv_backward(dz, h_in, ws[4 * d], need_input=d > 0)
        grads = [d_cw, dz.sum((0, 2, 3)), d_nw, d_nb] + grads
        if d_in is not None:
            dh = d_in
    return torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0)


def _keep_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep convolution and matrix-product outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def student_grad_recomputing_elementwise(cfg: ConvNetConfig, w: Tensor, x: Tensor, target: Tensor,
                                         scale: float = 1.0) -> Tensor:
    """:func:`student_grad` (same arguments, same values) whose backward keeps only the convolution and
    matrix-product outputs of its forward and recomputes the elementwise work from them."""
    return checkpoint(student_grad, cfg, w, x, target, scale, use_reentrant=False,
                      context_fn=functools.partial(create_selective_checkpoint_contexts, _keep_products))
