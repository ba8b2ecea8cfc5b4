"""How far experts move over the epochs a distillation matches: ||theta_{t+M} - theta_t|| per start epoch t,
for one or more trajectory stores side by side (e.g. a noisy arm and a TAD arm).

    python reproduction/expert_displacement.py runs/sym40-noisy/buffer runs/sym40-tad/buffer --expert-epochs 2

Trajectory matching learns its step size (``syn_lr``) for the student's ``syn_steps`` steps on the
synthetic set to cover the expert's displacement over ``expert_epochs`` epochs (the images can cover
part of it too). Every TAD arm recorded on CIFAR-10 learned a ~3x larger step size than its noisy arm;
this script measures the expert side of that. On digits (results/expert_displacement.md) the
CE + lambda * reverse-CE criterion moves experts 1.5-1.8x farther than plain CE on the same trusted
spaces, yet the learned step size is not larger there: displacement alone does not set it.
Prints a table (mean over the experts, per start epoch) and writes it as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tad_plugin.engine.runlog import provenance
from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.files import atomic_write_json


def displacement(store: TrajectoryStore, expert_epochs: int, max_experts: int | None = None) -> torch.Tensor:
    """float64 [E, T + 1 - expert_epochs]: ``||params[t + expert_epochs] - params[t]||_2`` of each finished
    expert (the first ``max_experts``) for every start epoch t."""
    if not 1 <= expert_epochs <= store.epochs:
        raise ValueError(f"expert_epochs must be in [1, {store.epochs}] (the store's epochs), got {expert_epochs}")
    experts = store.finished()[:max_experts]
    if not experts:
        raise ValueError(f"{store.root} has no finished expert")
    rows = []
    for e in experts:
        p = store.trajectory(e).double()
        rows.append((p[expert_epochs:] - p[:-expert_epochs]).norm(dim=1))
    return torch.stack(rows)


def summary(stores: dict[str, TrajectoryStore], expert_epochs: int, max_experts: int | None = None) -> dict:
    """``{name: {"experts": E, "mean": [per start epoch], "std": [...]}}`` (std over the experts; 0 for one)."""
    out = {}
    for name, store in stores.items():
        d = displacement(store, expert_epochs, max_experts)
        out[name] = {"experts": d.shape[0], "mean": [round(float(v), 4) for v in d.mean(0)],
                     "std": [round(float(v), 4) for v in (d.std(0) if d.shape[0] > 1 else torch.zeros(d.shape[1]))]}
    return out


def table(result: dict, expert_epochs: int) -> str:
    width = max(len(r["mean"]) for r in result.values())
    lines = ["| buffer (experts) | " + " | ".join(f"t={t}" for t in range(width)) + " |",
             "| --- |" + " ---: |" * width]
    for name, r in result.items():
        lines.append(f"| {name} ({r['experts']}) | " + " | ".join(f"{m:.3f}" for m in r["mean"]) + " |")
    return f"||theta_(t+{expert_epochs}) - theta_t||, mean over the experts:\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("buffers", nargs="+", type=Path, help="trajectory stores (a run's buffer folder)")
    p.add_argument("--expert-epochs", type=int, default=2, help="the M of the matching (distill.expert_epochs)")
    p.add_argument("--max-experts", type=int, help="only the first N finished experts of each store")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    a = p.parse_args(argv)
    stores = {str(b): TrajectoryStore.open(b) for b in a.buffers}
    result = summary(stores, a.expert_epochs, a.max_experts)
    print(table(result, a.expert_epochs))
    if a.out is not None:
        record = {**provenance("cpu", 0), "expert_epochs": a.expert_epochs, "buffers": result}  # no randomness here
        atomic_write_json(record, a.out)


if __name__ == "__main__":
    main()
