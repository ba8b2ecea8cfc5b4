#!/usr/bin/env python3
"""Per-epoch cost of TAD's dual loop (division + recalibration of a group of E experts) on generated data.

After every post-warm-up epoch, :class:`~tad_plugin.engine.experts.ExpertTrainer` divides the training set
for every expert (``tad.split: per-expert``; TAD's plugin fits the E experts' GMMs together through
``filter_dataset_batch``), and
:class:`~tad_plugin.engine.dual_loop.DualLoop` then calls
:func:`~tad_plugin.engine.experts.recalibrate_experts`, i.e. the ``recalibrate_batch`` hook for all
experts with the fixed sample features and the anchors. This script makes exactly those calls, through
:class:`~tad_plugin.TADHooks` with TAD's default plugin, at CIFAR-10 scale on generated data:

* ``--n`` samples (50,000) of 10 classes, 40% symmetric label noise;
* per expert and epoch, per-sample losses from two modes (gamma-distributed: low for samples whose
  current label is right, high for the others, with a per-expert overlap);
* ``--dim``-d features (512) clustered by the true class, 10 anchors per class near the class centres.

The labels and trusted spaces of one epoch feed the next, as in the engine. Per phase (library
functions wrapped with timers while the hooks run; ``cuda`` is synchronised around each): GMM fit,
class thresholds, anchor covariances, Mahalanobis reliability, reference set, kNN vote (search), label
update; ``other`` is the rest of the hooks' time (argument checks, normalisation, host <-> device
copies, glue). The first epoch is reported separately (it fills caches); the table is the median of
the following ``--epochs`` epochs.

usage: python benchmarks/benchmark_dual_loop.py --device cpu --out dual_loop_cpu.json
       python benchmarks/benchmark_dual_loop.py --device cpu --experts 2 --n 5000 --epochs 1   # smoke test
       python benchmarks/benchmark_dual_loop.py --device cpu --experts 4 --threads 1 --busy 2  # busy host

Results: benchmarks/results/benchmark_dual_loop.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import torch
from phase_timing import phase_timers, sync  # this folder's shared timing helpers

import tad_plugin.division as division
import tad_plugin.recalibration as recalibration
from tad_plugin import TADHooks
from tad_plugin.engine.experts import EpochState, recalibrate_experts
from tad_plugin.engine.runlog import device_name, provenance
from tad_plugin.files import atomic_write_json
from tad_plugin.noise import make_noisy_labels

#: (module, function, phase): the library functions timed while the hooks run.
PHASES = (
    (division, "_fit_posterior", "division: GMM fit"),
    (division, "class_thresholds", "division: thresholds"),
    (recalibration, "anchor_covariances", "recal: anchor covariances"),
    (recalibration, "mahalanobis_reliability", "recal: reliability"),
    (recalibration, "mahalanobis_reliability_batch", "recal: reliability"),
    (recalibration, "reference_set", "recal: reference set"),
    (recalibration, "reference_sets", "recal: reference set"),
    (recalibration, "weighted_vote", "recal: search + vote"),
    (recalibration, "apply_vote", "recal: label update"),
)





def make_data(n: int, dim: int, num_classes: int, anchors_per_class: int, seed: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean labels int64 [N], noisy labels int64 [N] (40% symmetric), features float32 [N, D] and
    anchors float32 [C * a, D] with labels int64 [C * a], all on ``device``."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, num_classes, (n,), generator=g)
    noisy = make_noisy_labels(clean, "symmetric", 0.4, num_classes=num_classes, seed=seed)
    centres = 0.35 * torch.randn(num_classes, dim, generator=g)
    features = centres[clean] + 1.0 * torch.randn(n, dim, generator=g)
    anchor_labels = torch.arange(num_classes).repeat_interleave(anchors_per_class)
    anchors = centres[anchor_labels] + 0.5 * torch.randn(len(anchor_labels), dim, generator=g)
    return (clean.to(device), noisy.to(device), features.to(device), anchors.to(device),
            anchor_labels.to(device))


def make_losses(clean: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-sample losses float32 [E, N] for labels int64 [E, N]: a low mode (exponential, mean 0.15) for
    right labels and a high one (|N(2.3, 0.6)|) for wrong labels and for 5-15% (per expert) hard samples."""
    g = torch.Generator().manual_seed(seed)
    e, n = labels.shape
    hard_rate = 0.05 + 0.1 * torch.arange(e, dtype=torch.float32)[:, None] / max(e - 1, 1)
    low_mode = (labels == clean).cpu() & (torch.rand(e, n, generator=g) >= hard_rate)
    low = -0.15 * torch.log(torch.rand(e, n, generator=g).clamp_min(1e-12))
    high = (2.3 + 0.6 * torch.randn(e, n, generator=g)).abs()
    return torch.where(low_mode, low, high).to(labels.device)


def run_epoch(hooks: TADHooks, clean: torch.Tensor, labels: torch.Tensor, features: torch.Tensor,
              anchors: torch.Tensor, anchor_labels: torch.Tensor, num_classes: int, epoch: int,
              seconds: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One post-warm-up epoch's TAD work for labels [E, N]: the per-expert division, all experts in one
    ``filter_dataset_batch`` call (as ``ExpertTrainer._divide``), then :func:`recalibrate_experts` (as ``DualLoop``).
    Adds the hooks' wall
    seconds to ``seconds`` and returns the new labels [E, N] and trusted spaces [E, N]."""
    device = features.device
    losses = make_losses(clean, labels, seed=1000 + epoch)
    sync(device)
    t0 = time.perf_counter()
    splits = hooks.filter_dataset_batch(losses, labels, num_classes)
    trusted = torch.stack([s.trusted.to(device) for s in splits])
    sync(device)
    t1 = time.perf_counter()
    state = EpochState(epoch, list(range(labels.shape[0])), torch.zeros(labels.shape[0], 1, device=device),
                       labels, trusted, losses, splits, num_classes)
    update = recalibrate_experts(hooks, features, state, anchors, anchor_labels)
    sync(device)
    t2 = time.perf_counter()
    seconds["division (filter_dataset_batch)"] += t1 - t0
    seconds["recalibration (recalibrate_experts)"] += t2 - t1
    assert update.labels is not None and update.trusted is not None
    return update.labels.to(device), update.trusted.to(device)


TOTALS = ("division (filter_dataset_batch)", "recalibration (recalibrate_experts)")


def busy_process(threads: int) -> subprocess.Popen:
    """A side process keeping ``threads`` CPU threads busy with matrix products until killed."""
    code = (f"import torch; torch.set_num_threads({threads}); a = torch.randn(512, 512)\n"
            "while True: a = torch.tanh(a @ a)")
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--experts", type=int, default=20, help="experts in the group (E)")
    p.add_argument("--n", type=int, default=50_000, help="training samples (N)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension (D)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--anchors-per-class", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after the first (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--busy", type=int, default=0,
                   help="keep this many CPU threads busy in a side process meanwhile (a host shared with a "
                        "training job); 0 = none")
    p.add_argument("--out", help="JSON record")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, start = torch.device(args.device), time.perf_counter()
    clean, noisy, features, anchors, anchor_labels = make_data(args.n, args.dim, args.classes,
                                                               args.anchors_per_class, args.seed, device)
    hooks = TADHooks()
    labels = noisy.expand(args.experts, args.n).clone()
    load = busy_process(args.busy) if args.busy else None
    per_epoch: list[dict[str, float]] = []
    for epoch in range(1 + args.epochs):
        seconds: dict[str, float] = defaultdict(float)
        with phase_timers(PHASES, device, seconds):
            labels, trusted = run_epoch(hooks, clean, labels, features, anchors, anchor_labels, args.classes,
                                        epoch, seconds)
        phased = sum(v for k, v in seconds.items() if k not in TOTALS)
        seconds["other (checks, normalisation, copies)"] = sum(seconds[k] for k in TOTALS) - phased
        seconds["total per epoch"] = sum(seconds[k] for k in TOTALS)
        per_epoch.append(dict(seconds))
        print(f"epoch {epoch}: {seconds['total per epoch']:.2f} s; label accuracy "
              f"{float((labels == clean).float().mean()):.4f}, trusted {float(trusted.float().mean()):.4f}",
              file=sys.stderr)
    if load is not None:
        load.kill()
    names = [*dict.fromkeys(name for _, _, name in PHASES), "other (checks, normalisation, copies)", *TOTALS,
             "total per epoch"]
    table = {name: statistics.median(ep.get(name, 0.0) for ep in per_epoch[1:]) if args.epochs else 0.0
             for name in names}
    first = {name: per_epoch[0].get(name, 0.0) for name in names}
    print(f"\n{device_name(device)}; N={args.n}, D={args.dim}, E={args.experts}, C={args.classes}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'phase':40s} {'first epoch':>12s} {'per epoch':>10s}")
    for name in names:
        print(f"{name:40s} {first[name]:12.3f} {table[name]:10.3f}")
    if args.out:
        atomic_write_json({
            **provenance(device, args.seed),
            "threads": torch.get_num_threads(), "busy_threads": args.busy,
            "wall_time_s": round(time.perf_counter() - start, 1),
            "settings": {"n": args.n, "dim": args.dim, "experts": args.experts, "classes": args.classes,
                         "anchors_per_class": args.anchors_per_class, "epochs": args.epochs},
            "first_epoch_s": {k: round(v, 4) for k, v in first.items()},
            "median_epoch_s": {k: round(v, 4) for k, v in table.items()},
            "final_labels_accuracy": round(float((labels == clean).float().mean()), 6),
            "final_trusted_fraction": round(float(trusted.float().mean()), 6)}, args.out)


if __name__ == "__main__":
    main()
