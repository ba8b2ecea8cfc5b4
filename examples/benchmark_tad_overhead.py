#!/usr/bin/env python3
"""Where TAD's per-epoch time goes during expert training: the pieces of one division + recalibration
round for a group of E experts, timed one by one on real images.

With TAD on, a CIFAR-10 expert epoch of 20 experts took 2.7x longer after the warm-up than without
(examples/results/cifar10/first_gpu_runs/README.md). One round of the dual loop is, per group:

* ``loss pass``: per-sample cross-entropy of every training image under each expert (no augmentation);
* ``division``: ``filter_dataset`` per expert (GMM on the CPU), or once on the mean losses (shared split);
* ``recalibrate``: the ``recalibrate`` hook per expert on [N, D] features (calibrated or fixed vote),
  or once when the experts share labels and trusted space (shared split).

The experts are fresh ConvNets trained for ``--epochs`` quick epochs on the noisy labels (so that losses
separate); features are random projections of the pixels to ``--feature-dim`` (the timing of the
search and Mahalanobis steps depends on N and D, not on what the features mean). Prints a table, writes
a JSON record (command, settings, seed, commit, device, wall time).

usage: python examples/benchmark_tad_overhead.py --dataset /root/cifar10.npz --out tad_overhead.json
       python examples/benchmark_tad_overhead.py --dataset digits --device cpu --experts 2   # smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tad_plugin.data import load_dataset
from tad_plugin.engine.config import BufferConfig, TADConfig
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.experts import ExpertTrainer, per_sample_losses
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.runlog import device_name, provenance
from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.files import atomic_write_json
from tad_plugin.noise import make_noisy_labels
from tad_plugin.tad import TrustAwareDiversion


def timed(fn, device: torch.device, repeat: int = 3) -> tuple[float, object]:
    """Median wall seconds of ``fn()`` over ``repeat`` calls (after one warm-up call), and its last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help="digits, cifar10, an arrays file .npz, ...")
    p.add_argument("--experts", type=int, default=20, help="experts in the group (E)")
    p.add_argument("--epochs", type=int, default=2, help="quick training epochs before timing")
    p.add_argument("--feature-dim", type=int, default=512, help="D of the inner loop's features")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON record")
    args = p.parse_args()
    device, start = torch.device(args.device), time.perf_counter()
    ds = load_dataset(args.dataset)
    k, n = ds.num_classes, len(ds.train_labels)
    noisy = make_noisy_labels(ds.train_labels, "symmetric", 0.4, num_classes=k, seed=args.seed)
    net = ConvNetConfig.for_dataset(ds)
    pre = Preprocessor.for_dataset(ds, zca=False, device=device)
    buffer = BufferConfig(num_experts=args.experts, epochs=args.epochs, experts_per_group=args.experts)
    trainer = ExpertTrainer(net, pre, buffer, TADConfig(enabled=False), device=device, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        store = TrajectoryStore.create(tmp, param_shapes=net.param_shapes, epochs=args.epochs, num_train=n,
                                       num_classes=k)
        trainer.train(store, ds.train_images, noisy, ds.test_images, ds.test_labels, seed=args.seed)
        params = torch.stack([store.trajectory(e)[-1] for e in range(args.experts)]).to(device)
    images, labels = ds.train_images.to(device), noisy.to(device)
    gen = torch.Generator().manual_seed(args.seed)
    projection = torch.randn(ds.train_images[0].numel(), args.feature_dim, generator=gen).to(device)
    features = (images.flatten(1).float() / 255) @ projection
    anchor_idx = torch.cat([torch.nonzero(labels == c).flatten()[:10] for c in range(k)])  # 10 per class
    anchors, anchor_labels = features[anchor_idx], labels[anchor_idx]

    rows = []
    t, (losses, _) = timed(lambda: per_sample_losses(net, params, images, labels.expand(args.experts, n), pre,
                                                     buffer.eval_batch_size), device)
    rows.append(("loss pass", f"E={args.experts}", t))
    tad = TrustAwareDiversion()
    t, splits = timed(lambda: [tad.filter_dataset(losses[e], labels, k) for e in range(args.experts)], device, 1)
    rows.append(("division, per expert", f"{args.experts} GMM fits", t))
    t, shared = timed(lambda: tad.filter_dataset(losses.mean(0), labels, k), device)
    rows.append(("division, shared", "1 GMM fit", t))
    trusted = shared.trusted.to(device)
    for name, plugin in (("calibrated", tad), ("fixed", TrustAwareDiversion(vote_threshold="fixed", num_neighbors=10))):
        t, _ = timed(lambda: plugin.recalibrate(features, labels, trusted, anchors, anchor_labels, k), device)
        rows.append((f"recalibrate ({name} vote)", f"1 call, N={n}, D={args.feature_dim}", t))
        rows.append((f"  x E per expert ({name})", f"{args.experts} calls", t * args.experts))
    print(f"\n{device_name(device)}; {ds.name}, N={n}, E={args.experts}, D={args.feature_dim}")
    print(f"{'piece':32s} {'what':28s} {'seconds':>8s}")
    for piece, what, t in rows:
        print(f"{piece:32s} {what:28s} {t:8.3f}")
    if args.out:
        atomic_write_json({
            **provenance(device, args.seed),
            "wall_time_s": round(time.perf_counter() - start, 1),
            "settings": {"dataset": ds.name, "num_train": n, "experts": args.experts, "feature_dim": args.feature_dim,
                         "quick_epochs": args.epochs},
            "rows": [{"piece": piece, "what": what, "seconds": round(t, 4)} for piece, what, t in rows]}, args.out)


if __name__ == "__main__":
    main()
