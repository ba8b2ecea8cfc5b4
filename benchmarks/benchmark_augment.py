#!/usr/bin/env python3
"""SimCLR augmentation alone: eager vs compiled pixel operations (views per second), printed as a table.

``augment_batch`` with :func:`~tad_plugin.features.augment.render` and with
:func:`~tad_plugin.features.augment.compiled_render` (what ``train.compile`` uses) on random uint8 CIFAR-shaped
images; ``--rounds`` alternated rounds of ``--calls`` timed calls each after ``--warmup`` untimed ones
(compilation included there); the median per-call time of each variant is reported. The whole training
step's share of augmentation is measured by ``reproduction/train_features.py --bench-only``.

usage: python benchmarks/benchmark_augment.py --device cuda --batch 1024 --out augment.json
       python benchmarks/benchmark_augment.py --device cpu --batch 512 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tad_plugin.engine.phases import synchronize
from tad_plugin.engine.runlog import provenance
from tad_plugin.features.augment import augment_batch, compiled_render, render
from tad_plugin.files import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=512, help="images per call (one view each)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--calls", type=int, default=10, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON record")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=g).to(device)
    variants = {"eager": render, "compiled": compiled_render()}

    for renderer in variants.values():
        for _ in range(args.warmup):
            augment_batch(images, renderer=renderer)
    per_call: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, renderer in variants.items():
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.calls):
                augment_batch(images, renderer=renderer)
            synchronize(device)
            per_call[name].append((time.perf_counter() - t0) / args.calls)
    rows = {name: {"ms_per_call": [round(1000 * s, 2) for s in v], "median_ms": round(1000 * statistics.median(v), 2),
                   "views_per_s": round(args.batch / statistics.median(v))} for name, v in per_call.items()}
    print(f"{'variant':10s} {'ms / call (median)':>19s} {'views / s':>10s}   rounds (ms)")
    for name, r in rows.items():
        print(f"{name:10s} {r['median_ms']:19.2f} {r['views_per_s']:10d}   {r['ms_per_call']}")
    speedup = rows["eager"]["median_ms"] / rows["compiled"]["median_ms"]
    print(f"compiled / eager speed: {speedup:.2f}x")
    if args.out:
        atomic_write_json({**provenance(device, args.seed), "threads": torch.get_num_threads(),
                           "wall_time_s": round(time.perf_counter() - start, 1),
                           "settings": {"batch": args.batch, "size": args.size, "calls": args.calls,
                                        "rounds": args.rounds, "warmup": args.warmup},
                           "rows": rows, "speedup": round(speedup, 3)}, args.out)


if __name__ == "__main__":
    main()
