#!/usr/bin/env python3
"""Check our trajectory-matching step against YOUR checkout of the official MTT code, number for number.

One distillation iteration is computed twice from the same inputs (a ConvNet-128 D3 start point and a
target point one "epoch" away, 100 random images, class-major labels, the learnable step size): once with
upstream's own ``networks.ConvNet`` + ``reparam_module.ReparamModule`` and the inner loop of its
``distill.py`` (``syn_steps`` SGD steps on all images, cross-entropy, ``autograd.grad(create_graph=True)``,
the normalised parameter-matching loss), once with :class:`tad_plugin.engine.matching.TrajectoryMatcher`
for each ``distill.inner_grad`` route of ``--routes`` (``explicit`` and ``compiled`` with ``recompute_steps``,
which keeps the memory of 30 unrolled float64 steps small; ``compiled`` needs a C++ toolchain). DSA is off on both
sides (its random draws cannot be shared);
the DSA operations themselves are written to upstream's formulas and tested in ``tests/test_engine_dsa.py``.
Everything runs in float64 on the CPU, so the two should agree to rounding (~1e-15): the matching loss, the
gradient w.r.t. the images and the gradient w.r.t. the step size.

    python reproduction/device/check_mtt_step.py --repo ~/mtt-distillation [--syn-steps 5] [--out check.json]

Nothing of the checkout is copied: it is imported from ``--repo`` for the run only. Exit code 0 when every
route agrees within ``--tolerance`` (relative), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.matching import INNER_GRADS, MatchingConfig, TrajectoryMatcher, class_labels
from tad_plugin.engine.runlog import provenance
from tad_plugin.files import atomic_write_json


def upstream_modules(repo: Path) -> tuple[type, type]:
    """``networks.ConvNet`` and ``reparam_module.ReparamModule`` from the checkout at ``repo``."""
    missing = [f for f in ("networks.py", "reparam_module.py") if not (repo / f).is_file()]
    if missing:
        raise SystemExit(f"{repo} has no {' / '.join(missing)}: point --repo at a checkout of "
                         f"GeorgeCazenavette/mtt-distillation (the folder holding distill.py)")
    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module("networks").ConvNet, importlib.import_module("reparam_module").ReparamModule
    finally:
        sys.path.remove(str(repo))


def upstream_step(convnet: type, reparam: type, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, syn_steps: int, lr: float) -> dict[str, torch.Tensor]:
    """distill.py's iteration with batch_syn = all images and no DSA: loss and its gradients."""
    net = convnet(3, 10, 128, 3, "relu", "instancenorm", "avgpooling", (32, 32)).double()
    student = reparam(net)
    image_syn = images.clone().requires_grad_(True)
    syn_lr = torch.tensor(lr, dtype=torch.float64).requires_grad_(True)
    params = [start.clone().requires_grad_(True)]
    num_params = start.numel()
    criterion = torch.nn.CrossEntropyLoss()
    for _ in range(syn_steps):
        order = torch.randperm(images.shape[0])  # upstream shuffles its chunks; the mean loss does not care
        out = student(image_syn[order], flat_param=params[-1])
        grad = torch.autograd.grad(criterion(out, labels[order]), params[-1], create_graph=True)[0]
        params.append(params[-1] - syn_lr * grad)
    loss = torch.nn.functional.mse_loss(params[-1], target, reduction="sum") / num_params
    loss = loss / (torch.nn.functional.mse_loss(start, target, reduction="sum") / num_params)
    loss.backward()
    return {"loss": loss.detach(), "images_grad": image_syn.grad, "syn_lr_grad": syn_lr.grad}


def our_step(route: str, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
             syn_steps: int, lr: float) -> dict[str, torch.Tensor]:
    """The same iteration through TrajectoryMatcher (start epoch 0 of a two-point trajectory)."""
    cfg = MatchingConfig(iterations=1, syn_steps=syn_steps, expert_epochs=1, max_start_epoch=1, lr_img=1.0,
                         lr_lr=1.0, lr_teacher=lr, dsa_strategy="none", eval_every=0, checkpoint_every=0,
                         inner_grad=route, recompute_steps=route != "autograd")  # recompute: memory, same values
    m = TrajectoryMatcher(ConvNetConfig(3, 10, (32, 32)), cfg, [torch.stack([start, target])], images.clone(),
                          labels, device="cpu", progress=False)
    loss = m.step()
    return {"loss": loss, "images_grad": m.images.grad, "syn_lr_grad": m.syn_lr.grad}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="your mtt-distillation checkout")
    p.add_argument("--syn-steps", type=int, default=5, help="unrolled student steps (upstream CIFAR-10 IPC 10: 30)")
    p.add_argument("--lr", type=float, default=0.01, help="the step size syn_lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-10, help="largest relative difference accepted")
    p.add_argument("--routes", default="autograd,explicit",
                   help="our inner_grad routes to compare, comma-separated (explicit runs with recompute_steps)")
    p.add_argument("--out", help="JSON record of the comparison")
    args = p.parse_args()
    convnet, reparam = upstream_modules(args.repo.expanduser().resolve())
    torch.set_default_dtype(torch.float64)  # both sides, including the learnable step size, in float64
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = [r for r in routes if r not in INNER_GRADS]
    if unknown:
        raise SystemExit(f"unknown route(s) {unknown}; choose from {', '.join(INNER_GRADS)}")
    torch.manual_seed(args.seed)
    start = torch.cat([q.detach().reshape(-1) for q in
                       convnet(3, 10, 128, 3, "relu", "instancenorm", "avgpooling", (32, 32)).double().parameters()])
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(100, 3, 32, 32, dtype=torch.float64)
    labels = class_labels(10, 10)
    ref = upstream_step(convnet, reparam, start, target, images, labels, args.syn_steps, args.lr)
    rows, ok = [], True
    for route in routes:
        ours = our_step(route, start, target, images, labels, args.syn_steps, args.lr)
        diff = {k: relative(ours[k].reshape(-1), ref[k].reshape(-1)) for k in ref}
        ok &= max(diff.values()) <= args.tolerance
        rows.append({"route": route, "loss": float(ours["loss"]), "relative_difference": diff})
        print(f"{route:9s} loss {float(ours['loss']):.15f} (upstream {float(ref['loss']):.15f}); relative "
              f"difference: loss {diff['loss']:.1e}, images' gradient {diff['images_grad']:.1e}, "
              f"syn_lr's gradient {diff['syn_lr_grad']:.1e}")
    print("AGREE" if ok else f"DIFFER (tolerance {args.tolerance:g})")
    if args.out:
        atomic_write_json({**provenance(torch.device("cpu"), args.seed), "repo": str(args.repo),
                           "syn_steps": args.syn_steps, "lr": args.lr, "tolerance": args.tolerance,
                           "agree": ok, "rows": rows}, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
