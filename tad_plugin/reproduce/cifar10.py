"""Reproduce the paper's CIFAR-10 comparisons (Tables 1-3: MTT, FTD, DATM and ATT with and without TAD at
IPC 1 / 10 / 50 under symmetric and asymmetric noise at rates 0.2 and 0.4, CIFAR-10N worst, and the ablation of
TAD's parts on DATM), one command per cell.

    python reproduction/reproduce_cifar10.py --list                              # every cell and its command
    python reproduction/reproduce_cifar10.py --cell mtt-ipc50-sym40-tad --budget short --dataset /data/cifar10.npz
    python reproduction/reproduce_cifar10.py --cell 'mtt-*-sym40-*' --budget short --dataset /data/cifar10.npz \\
        --gpus 0 --jobs 3                                                    # a batch packed onto one GPU
    python reproduction/reproduce_cifar10.py --cell 'datm-ipc50-asym40-?' --budget short \\
        --dataset /data/cifar10.npz --gpus 0,1 --jobs 2                      # Table 3 under asym40
    python reproduction/reproduce_cifar10.py --cell all --budget short --dataset /data/cifar10.npz \\
        --cifar-n /data/CIFAR-10_human.pt                                    # the whole grid
    python reproduction/reproduce_cifar10.py --cell mtt-ipc10-asym40-tad --budget short \\
        --set tad.balance_classes=false \\
        --tag nobal --dataset /data/cifar10.npz                              # a variant: its own runs and record
    python reproduction/reproduce_cifar10.py --queue                             # cifar10/QUEUE.md: what is left
    python reproduction/reproduce_cifar10.py --page                              # results page from the records

Cells are named ``<method>-ipc<N>-<noise>-<arm>``: method ``mtt``, ``ftd``, ``datm`` or ``att``; IPC 1, 10 or
50; noise ``sym20``, ``sym40``, ``asym20``, ``asym40`` (CIFAR-10's class flips) or ``c10n-worst`` (the
CIFAR-10N worst human labels, ``--cifar-n``); arm ``noisy`` (the method on the noisy labels) or ``tad`` (with
TAD). Table 3's configurations run on DATM at IPC 50 under asymmetric noise: ``datm-ipc50-asym40-B`` ... ``-E``
switch TAD's parts (reverse-CE regulariser, outer loop, inner loop) as the paper's rows do; ``-A`` is the
``noisy`` cell and ``-F`` the ``tad`` cell (every part on), so those two run once. The two-stage baselines
(the paper's Table 4 protocol) run MTT at IPC 10 and 50 under symmetric noise after cleanlab cleaned the labels:
``mtt-ipc10-sym40-prune`` distils from the samples cleanlab does not flag, ``-relabel`` from all samples with
its suggested labels; cleanlab's run (``<out>/audit/<noise>-cleanlab``) comes first, once per label set.
``--cell`` takes names, shell patterns (``'att-ipc50-*'``) or ``all``.

Each cell's config is built from a base YAML per noise kind in ``tad_plugin/configs/`` (``cifar10_sym.yaml``,
``cifar10_asym.yaml``, ``cifar10n_worst.yaml``) with ``--method``, ``--ipc``, ``--noise-rate``, ``--tad`` /
``--no-tad``: the method's own settings come from its table (``tad_plugin.adapters``). ``--budget`` adds the
budget's settings, then Table 3's switches, then your ``--set`` (later ones win).

Experts are shared: one buffer per (noise setting, arm, expert recipe, preprocessing) serves every cell of that
recipe whose method's table gives its IPC the same preprocessing (ZCA or raw pixels: upstream's MTT, FTD and ATT
IPC-50 rows use no ZCA, the other rows and DATM's do). MTT's and ATT's experts are the same plain-SGD recipe
(ATT's buffer script differs only in its batch, 512 against MTT's 256: MTT's buffer serves both); DATM's GSAM
experts (rho 0.01, alpha 0.3) serve FTD at IPC 1 and 10 (FTD's IPC 50 row trains GSAM with alpha 1: a buffer of
its own). A buffer is trained once by ``tad buffer`` into ``<out>/buffers/<noise>-<arm>-<recipe>-<zca|raw>``
(e.g. ``sym40-noisy-sgd-zca``: MTT and ATT at IPC 1 and 10; ``sym40-noisy-sgd-raw``: at IPC 50), for the epochs
its longest reader needs (max over the served cells of max_start_epoch + expert_epochs + 1: 23 for the SGD
experts with ZCA, 43 for the others at the short budget), and its cells start as soon as it is finished (``tad
run --buffer``); each record names the buffer it used. ``--set data.zca=...`` puts every cell on one
preprocessing (and so in fewer buffers). When the TAD buffers' inner loop needs the SimCLR extractor and it has
to be trained first (``--features-budget``; the default place of ``tad features train``, unless ``--set
tad.features=...`` names another), it trains at the same time as those buffers' warm-up: they get
``tad.features_wait_s`` (the extractor's budget and a margin) and load it only when the inner loop first needs
it, so nothing waits for the extractor job.

Jobs run ``--jobs`` at once on each GPU of ``--gpus``, logs in ``<out>/logs/<job>.log``; a failed job does not
stop the others (the exit code is 1 and its log's last lines are printed; cells whose buffer failed are not
started). At the end a table says what ran where (GPU, start, end, wall time), also written to
``<out>/logs/schedule.md``. Each finished cell's ``result_run.json`` is copied to
``<results>/cifar10/<cell>.json`` with a ``cell`` entry added (its method, IPC, noise, arm, switches,
budget and buffer). Runs resume: re-running a cell skips its finished stages. ``--results DIR`` is the results
folder (records in ``DIR/cifar10/``, the page ``DIR/README.md``): ./results by default, the checkout's
results folder for ``reproduction/reproduce_cifar10.py``. ``tad reproduce`` takes the same options.

Pixels: if you use the JPEG-compressed CIFAR-10 copy, absolute accuracies differ a little from the
paper's official pixels; the comparison between arms on the same copy stays valid.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pages import (
    acc_text,
    budget,
    detail_path,
    plot_curves,
    record_paths,
    run_budget,
    varies,
    write_detail_pages,
)

#: the base configs of :data:`NOISES` (package data: ``tad_plugin/configs/``)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

OTHER_RESULTS = (
    ("demo_digits.md", "`tad demo` on digits (CPU): noisy MTT vs MTT + TAD, trust report, ablations"),
    ("demo_digits_asym40.json", "`tad demo` on digits with CIFAR-10's asymmetric flips at 40% (CPU): both arms, trust "
     "report"),
    ("demo_digits_asym40_balanced.json", "the same with `tad.balance_classes` (CPU): both arms, trust report"),
    ("features_cifar10.md", "SimCLR ResNet-18 extractor on CIFAR-10: kNN accuracy vs epochs and minutes"),
    ("../benchmarks/results/benchmark_engine.md", "engine speed vs the official MTT code (experts, distillation, "
     "evaluation)"),
    ("../benchmarks/results/benchmark_experts.json", "expert-training variants (fp32 / bf16 / channels_last, E, TAD) "
     "per expert-epoch"),
    ("../benchmarks/results/benchmark_inner_grad_cpu.json", "distillation routes (autograd / explicit / compiled, "
     "recompute): time, memory (CPU)"),
    ("../benchmarks/results/benchmark_inner_grad_h200_ipc10.json", "the same routes on an H200, IPC 10 (30 unrolled "
     "steps, batch 100)"),
    ("../benchmarks/results/benchmark_inner_grad_h200_ipc50.json", "the same routes on an H200, IPC 50 (batch 500): "
     "peak memory"),
    ("features_probe/features_cifar10_lr024.md", "SimCLR probe: peak lr 0.24 (2x the default) for 10 minutes on an "
     "H200"),
    ("features_probe/features_cifar10_lr006.md", "SimCLR probe: peak lr 0.06 (half the default) for 10 minutes on an "
     "H100"),
    ("../benchmarks/results/benchmark_engine_routes_h100.json", "every engine route of the CIFAR-10 configs from one "
     "H100 run, with official and floor ratios"),
    ("features_cifar10_throughput.json", "SimCLR training throughput (batch, compile) and augmentation share"),
    ("../benchmarks/results/benchmark_augment_cpu.json", "SimCLR augmentation alone, eager vs compiled pixel "
     "operations (CPU)"),
    ("../benchmarks/results/benchmark_distributed.json", "1 vs 2 GPUs under torchrun: expert training, IPC 50 x 100 "
     "distillation"),
    ("../benchmarks/results/benchmark_dual_loop.md", "TAD's per-epoch division + recalibration at CIFAR-10 scale: "
     "before / after the speed-up (CPU), and on an H200"),
    ("../benchmarks/results/benchmark_experts_h200.json", "expert-epoch on an H200, bf16 (test pass too) vs fp32, "
     "compiled, E = 20"),
    ("../benchmarks/results/benchmark_experts_h200_e40.json", "expert-epoch on an H200, E = 20 vs 40 experts per "
     "launch, and without DSA"),
    ("../benchmarks/results/benchmark_experts_h100_split.json", "expert-epoch on an H100 with the test pass timed "
     "apart: the official comparison train + test and train only"),
    ("../benchmarks/results/benchmark_experts_h100.json", "expert-epoch on an H100, bf16 (test pass too) vs fp32, "
     "compiled, E = 20"),
    ("../benchmarks/results/benchmark_inner_grad_h100_ipc10.json", "distillation routes on an H100, IPC 10: autograd "
     "vs compiled + recompute"),
    ("../benchmarks/results/benchmark_inner_grad_h100_ipc10_profile.json", "the same on another H100, profiled: kernel "
     "time vs wall time, top kernels"),
    ("../benchmarks/results/benchmark_augment_h100.json", "SimCLR augmentation alone on an H100, eager vs compiled "
     "pixel operations"),
    ("features_cifar10_throughput_h100_2026-11-26.json", "SimCLR training throughput on an H100 with the compiled "
     "augmentation"),
    ("features_cifar10_throughput_h100_jitter_order.json", "the same after the per-sample colour-jitter order (more "
     "pixel work: augmentation 3.9% -> 10.5% of a compiled batch-512 step)"),
    ("features_cifar10_throughput_h100_fused_render.json", "the same with the whole view rendered as one compiled "
     "graph (augmentation 6.0% of a compiled batch-512 step)"),
    ("../benchmarks/results/benchmark_augment_cpu_fused_render.json", "SimCLR augmentation alone before / after the "
     "one-graph render (CPU)"),
    ("features_probe/features_cifar10_fixes.md", "SimCLR 10 minutes on an H100 with the audit's two fixes (per-sample "
     "jitter order, fixed warm-up): 79.87% kNN@10, 286 epochs"),
    ("features_probe/features_cifar10_fused.md", "the same with the one-graph render: 345 epochs, 79.57% kNN@10"),
    ("features_probe/features_cifar10_t02.md", "SimCLR probe: temperature 0.2 (default 0.5) for 10 minutes on an H200: "
     "374 epochs, 78.18% kNN@10"),
    ("features_probe/features_cifar10_crop008.md", "SimCLR 10 minutes on an H100 with crop scale (0.08, 1), now the "
     "default: 345 epochs, 80.31% kNN@10"),
    ("features_probe/features_cifar10_s14.md", "SimCLR 5.5 minutes on an H100 (the extractor of sym40-tad-avg1/-avg6): "
     "199 epochs, 78.91% kNN@10"),
    ("features_probe/features_cifar10_s15.md", "SimCLR 5.5 minutes on an H100 again (the extractor of att-sym40-tad "
     "and division/sym40-tad-rce3): 175 epochs, 78.63% kNN@10"),
    ("features_probe/ten_minute_runs.png", "the eight 10-minute SimCLR runs' kNN curves on one plot"),
    ("recalibration_sweep.md", "the inner loop's vote settings on digits and on SimCLR CIFAR-10 features (CPU)"),
    ("cifar10/division/README.md", "the final division under three threshold rules (Eq. 5's class mean, global 0.5, "
     "min of both), per class, on CIFAR-10 sym40 (SGD and GSAM experts) and asym40; losses averaged over the last K "
     "epochs (tad.loss_average), offline and trained with; a stronger reverse-CE term (tad.reg_weight=3)"),
    ("expert_displacement.md", "how far experts move per 2 epochs: noisy vs TAD with and without reverse CE "
     "(digits, CPU) and noisy vs TAD GSAM experts (CIFAR-10 sym40), beside the learned step size"),
    ("../benchmarks/results/benchmark_tad_overhead_h100.json", "TAD's expert epoch beside the noisy one on an H100 "
     "(E = 20, CIFAR-10), where TAD's time goes, and the batched division against one call per expert"),
    ("cifar10/batches/2026-12-07-h100.md", "one grid batch on an H100: what ran where and when (extractor, two "
     "buffers, four cells)"),
    ("cifar10/first_gpu_runs/README.md", "first CIFAR-10 GPU runs: a pipeline check (no ZCA), not results"),
    ("../docs/wrapping.md", "`tad wrap` on the real MTT / FTD / DATM / ATT code"),
)

# ---------------------------------------------------------------------- the grid

METHODS = ("mtt", "ftd", "datm", "att")
IPCS = (1, 10, 50)
#: noise setting -> (base config under :data:`CONFIGS`, noise rate; None: CIFAR-10N's own labels)
NOISES = {"sym20": ("cifar10_sym.yaml", 0.2), "sym40": ("cifar10_sym.yaml", 0.4),
          "asym20": ("cifar10_asym.yaml", 0.2), "asym40": ("cifar10_asym.yaml", 0.4),
          "c10n-worst": ("cifar10n_worst.yaml", None)}
#: The methods of Table 2's CIFAR-10N block (the paper has no DATM row there).
C10N_METHODS = ("mtt", "ftd", "att")
#: Table 3's configurations: letter -> (Reg, OL, IL), the reverse-CE regulariser, outer loop, inner loop.
#: A (none: DATM on the noisy labels) is the ``noisy`` arm, F (all three) the ``tad`` arm.
ABLATION = {"A": (False, False, False), "B": (True, False, False), "C": (False, True, False),
            "D": (True, True, False), "E": (False, True, True), "F": (True, True, True)}
#: Table 3's cells: DATM at IPC 50 under these noise settings.
ABLATION_CELLS = ("datm", 50, ("asym20", "asym40"))
#: The paper's two-stage protocol (its Table 4, there on CIFAR-100, whose images are not available here) on
#: CIFAR-10: confident learning (cleanlab, 5 folds) cleans the noisy labels, then plain MTT distils, ``prune``
#: from the samples it does not flag, ``relabel`` from all samples with its suggested labels; beside the ``noisy``
#: and ``tad`` cells of the same setting. (method, IPCs, noise settings).
TWO_STAGE_CELLS = ("mtt", (10, 50), ("sym20", "sym40"))
TWO_STAGE_ARMS = ("prune", "relabel")
#: Arms: noisy, tad, Table 3's B-E (A and F are the noisy and tad arms), and the two-stage arms.
ARMS = ("noisy", "tad", "B", "C", "D", "E", *TWO_STAGE_ARMS)
CELL_RE = re.compile(r"(?P<method>mtt|ftd|datm|att)-ipc(?P<ipc>\d+)-(?P<noise>sym20|sym40|asym20|asym40|c10n-worst)"
                     r"-(?P<arm>noisy|tad|prune|relabel|[A-F])")


def arm_parts(arm: str) -> tuple[bool, bool, bool]:
    """(Reg, OL, IL) of an arm: Table 3's letter, F for ``tad``, A (TAD off) for ``noisy`` and the two-stage
    arms."""
    return ABLATION["F" if arm == "tad" else arm if arm in ABLATION else "A"]


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: ``method`` at ``ipc`` under ``noise`` (a key of :data:`NOISES`), ``arm`` one of
    :data:`ARMS`."""

    method: str
    ipc: int
    noise: str
    arm: str

    @property
    def name(self) -> str:
        return f"{self.method}-ipc{self.ipc}-{self.noise}-{self.arm}"

    @property
    def parts(self) -> tuple[bool, bool, bool]:
        """(Reg, OL, IL): which of TAD's parts are on."""
        return arm_parts(self.arm)

    @property
    def tad(self) -> bool:
        return self.arm not in ("noisy", *TWO_STAGE_ARMS)

    @property
    def setting(self) -> str:
        """``<method>-ipc<N>-<noise>``: the cell without its arm."""
        return f"{self.method}-ipc{self.ipc}-{self.noise}"


def cells() -> dict[str, Cell]:
    """Every cell of the grid, in the order of the paper's tables: Table 1 (noise, method, IPC, arm), Table 2's
    CIFAR-10N cells, Table 3's configurations B-E, the two-stage cells."""
    grid = [Cell(m, i, n, a) for n in ("sym20", "sym40", "asym20", "asym40") for m in METHODS for i in IPCS
            for a in ("noisy", "tad")]
    grid += [Cell(m, i, "c10n-worst", a) for m in C10N_METHODS for i in IPCS for a in ("noisy", "tad")]
    method, ipc, noises = ABLATION_CELLS
    grid += [Cell(method, ipc, n, a) for n in noises for a in "BCDE"]
    method, ipcs, noises = TWO_STAGE_CELLS
    grid += [Cell(method, i, n, a) for n in noises for i in ipcs for a in TWO_STAGE_ARMS]
    return {c.name: c for c in grid}


def aliases() -> dict[str, str]:
    """Table 3's A and F names -> the noisy and tad cells they are."""
    method, ipc, noises = ABLATION_CELLS
    return {f"{method}-ipc{ipc}-{n}-{letter}": f"{method}-ipc{ipc}-{n}-{arm}" for n in noises
            for letter, arm in (("A", "noisy"), ("F", "tad"))}


def resolve_cells(requested: Sequence[str]) -> list[str]:
    """The cell names ``requested`` stands for (names, Table 3 aliases, shell patterns, ``all``), in grid order
    without repeats.

    Raises:
        SystemExit: a name or pattern that matches no cell.
    """
    grid, alias = cells(), aliases()
    chosen: set[str] = set()
    for text in requested:
        if text == "all":
            chosen.update(grid)
            continue
        hits = {alias.get(n, n) for n in [*grid, *alias] if fnmatch.fnmatchcase(n, text)}
        if not hits:
            raise SystemExit(f"--cell {text}: no such cell (names are <method>-ipc<N>-<noise>-<arm>, e.g. "
                             f"mtt-ipc50-sym40-tad; --list shows them all)")
        chosen.update(hits)
    return [n for n in grid if n in chosen]


# ---------------------------------------------------------------------- the paper's numbers

#: Table 1 (CIFAR-10) and Table 2 (CIFAR-10N worst): (method, noise, IPC) -> (method, method + TAD); None = not
#: readable in the paper's text.
PAPER: dict[tuple[str, str, int], tuple[float | None, float | None]] = {
    ("mtt", "sym20", 1): (45.2, 46.2), ("mtt", "sym40", 1): (44.2, None),
    ("mtt", "sym20", 10): (62.4, 64.7), ("mtt", "sym40", 10): (57.5, 64.6),
    ("mtt", "sym20", 50): (68.6, 71.5), ("mtt", "sym40", 50): (60.2, 71.2),
    ("ftd", "sym20", 1): (45.3, 46.6), ("ftd", "sym40", 1): (43.9, 46.2),
    ("ftd", "sym20", 10): (61.3, 66.1), ("ftd", "sym40", 10): (56.2, 65.4),
    ("ftd", "sym20", 50): (67.9, 71.9), ("ftd", "sym40", 50): (61.1, 71.7),
    ("datm", "sym20", 1): (45.3, 46.1), ("datm", "sym40", 1): (42.9, 45.8),
    ("datm", "sym20", 10): (62.1, 66.0), ("datm", "sym40", 10): (58.2, 65.5),
    ("datm", "sym20", 50): (68.7, 72.6), ("datm", "sym40", 50): (61.5, 71.6),
    ("att", "sym20", 1): (44.5, 47.9), ("att", "sym40", 1): (41.8, 46.8),
    ("att", "sym20", 10): (62.4, 66.4), ("att", "sym40", 10): (58.1, 66.2),
    ("att", "sym20", 50): (69.3, 71.3), ("att", "sym40", 50): (63.8, 71.1),
    ("mtt", "asym20", 1): (44.5, 45.8), ("mtt", "asym40", 1): (40.9, 45.6),
    ("mtt", "asym20", 10): (58.7, 64.2), ("mtt", "asym40", 10): (54.4, 63.9),
    ("mtt", "asym20", 50): (67.5, 71.1), ("mtt", "asym40", 50): (59.1, 70.0),
    ("ftd", "asym20", 1): (45.0, 45.9), ("ftd", "asym40", 1): (42.5, 45.8),
    ("ftd", "asym20", 10): (60.9, 65.3), ("ftd", "asym40", 10): (53.4, 64.9),
    ("ftd", "asym20", 50): (63.6, 71.0), ("ftd", "asym40", 50): (53.3, 69.9),
    ("datm", "asym20", 1): (43.7, 46.0), ("datm", "asym40", 1): (38.7, 45.4),
    ("datm", "asym20", 10): (61.8, 64.8), ("datm", "asym40", 10): (57.3, 64.3),
    ("datm", "asym20", 50): (62.5, 72.4), ("datm", "asym40", 50): (55.0, 70.7),
    ("att", "asym20", 1): (43.5, 47.3), ("att", "asym40", 1): (41.9, 46.4),
    ("att", "asym20", 10): (62.1, 66.2), ("att", "asym40", 10): (54.6, 65.6),
    ("att", "asym20", 50): (67.3, 70.6), ("att", "asym40", 50): (61.5, 69.5),
    ("mtt", "c10n-worst", 1): (43.8, 46.6), ("mtt", "c10n-worst", 10): (55.7, 64.4),
    ("mtt", "c10n-worst", 50): (62.1, 69.9),
    ("ftd", "c10n-worst", 1): (43.4, 45.6), ("ftd", "c10n-worst", 10): (55.4, 63.8),
    ("ftd", "c10n-worst", 50): (60.3, 69.2),
    ("att", "c10n-worst", 1): (42.3, 45.9), ("att", "c10n-worst", 10): (58.3, 65.7),
    ("att", "c10n-worst", 50): (61.9, 68.9),
}
#: Entries of :data:`PAPER` read through the text's consistent glyph errors ('0' for a leading '6', '/' for a
#: leading '7'): (method, noise, IPC, arm); the page marks them.
PAPER_READ_THROUGH_GLYPHS = {("mtt", "sym20", 10, "tad"), ("mtt", "sym20", 50, "tad"), ("mtt", "sym40", 50, "tad"),
                             ("ftd", "sym20", 50, "noisy")}
#: Table 3 (DATM, IPC 50): configuration -> {noise: accuracy}.
PAPER_ABLATION = {"A": {"asym20": 62.5, "asym40": 55.0}, "B": {"asym20": 64.1, "asym40": 58.8},
                  "C": {"asym20": 69.4, "asym40": 65.1}, "D": {"asym20": 70.7, "asym40": 67.3},
                  "E": {"asym20": 69.3, "asym40": 67.6}, "F": {"asym20": 72.4, "asym40": 70.7}}


# ---------------------------------------------------------------------- records of earlier names

#: The IPC-10 settings of the records made before the grid had IPC in its names: old prefix -> (method, noise).
LEGACY_SETTINGS = {"sym40": ("mtt", "sym40"), "asym40": ("mtt", "asym40"), "c10n-worst": ("mtt", "c10n-worst"),
                   "ftd-sym40": ("ftd", "sym40"), "datm-sym40": ("datm", "sym40"), "att-sym40": ("att", "sym40"),
                   "att-c10n-worst": ("att", "c10n-worst")}
#: Cell -> the record of an earlier name that is that cell at the grid's iterations and experts (20 experts,
#: 1000 iterations; trained for 23 epochs, all IPC 10 reads): the page and the queue use it while the cell has
#: no record of its own.
LEGACY_RECORDS = {
    "mtt-ipc10-sym40-noisy": "sym40-noisy-e20-i1000", "mtt-ipc10-sym40-tad": "sym40-tad-e20-i1000",
    "mtt-ipc10-asym40-noisy": "asym40-noisy", "mtt-ipc10-asym40-tad": "asym40-tad",
    "mtt-ipc10-c10n-worst-noisy": "c10n-worst-noisy", "mtt-ipc10-c10n-worst-tad": "c10n-worst-tad",
    "ftd-ipc10-sym40-noisy": "ftd-sym40-noisy", "ftd-ipc10-sym40-tad": "ftd-sym40-tad",
    "datm-ipc10-sym40-noisy": "datm-sym40-noisy", "datm-ipc10-sym40-tad": "datm-sym40-tad",
    "att-ipc10-sym40-noisy": "att-sym40-noisy-i1000", "att-ipc10-sym40-tad": "att-sym40-tad-i1000",
    "att-ipc10-c10n-worst-noisy": "att-c10n-worst-noisy", "att-ipc10-c10n-worst-tad": "att-c10n-worst-tad",
}


def record_name(cell: str, results: Path) -> str:
    """The record stem that holds ``cell``: ``<cell>`` when ``<cell>.json`` exists or no earlier record stands
    for it, else its :data:`LEGACY_RECORDS` name."""
    legacy = LEGACY_RECORDS.get(cell)
    if legacy is None or (results / f"{cell}.json").is_file() or not (results / f"{legacy}.json").is_file():
        return cell
    return legacy


def cell_of_record(stem: str) -> tuple[Cell, str | None] | None:
    """The cell a record's name (``<cell>[-<tag>]``, or an earlier ``<setting>-<arm>[-<tag>]`` name) belongs
    to, with its tag; None for a name of neither form."""
    m = re.match(CELL_RE.pattern + r"(?:-(?P<tag>.+))?$", stem)
    if m:
        arm = {"A": "noisy", "F": "tad"}.get(m["arm"], m["arm"])
        return Cell(m["method"], int(m["ipc"]), m["noise"], arm), m["tag"]
    for old in sorted(LEGACY_SETTINGS, key=len, reverse=True):
        m = re.match(rf"{re.escape(old)}-(?P<arm>noisy|tad)(?:-(?P<tag>.+))?$", stem)
        if m:
            method, noise = LEGACY_SETTINGS[old]
            return Cell(method, 10, noise, m["arm"]), m["tag"]
    return None


# ---------------------------------------------------------------------- budgets and buffers

def method_defaults(method: str, ipc: int) -> dict:
    """``method``'s own settings for CIFAR-10 at ``ipc`` (its adapter's table)."""
    from tad_plugin.runs import method_adapter

    return method_adapter(method)[1]("cifar10", ipc)


def recipe(method: str, ipc: int) -> str:
    """The expert recipe of ``method`` at ``ipc``: ``sgd`` (MTT, ATT) or ``gsam-a<alpha>`` (DATM, FTD); batch
    size and epoch count are not part of it (see the module docstring)."""
    b = method_defaults(method, ipc)["buffer"]
    return "sgd" if b["optimizer"] == "sgd" else f"gsam-a{b['alpha']:g}"


def zca_of(method: str, ipc: int, sets: Sequence[str] = ()) -> bool:
    """Whether ``method``'s cells at ``ipc`` whiten with ZCA: ``data.zca`` of ``sets`` when they set it, else
    the method's own table (upstream's MTT, FTD and ATT IPC-50 rows: no ZCA; DATM: ZCA everywhere)."""
    from tad_plugin.engine.config import apply_overrides

    chosen = apply_overrides({}, list(sets)).get("data", {}).get("zca")
    return bool(method_defaults(method, ipc)["data"]["zca"] if chosen is None else chosen)


def preprocessing(zca: bool) -> str:
    """The preprocessing part of a buffer name: ``zca`` or ``raw``."""
    return "zca" if zca else "raw"


def served(rec: str, zca: bool, sets: Sequence[str] = ()) -> list[tuple[str, int]]:
    """The (method, IPC) rows whose cells distil from a buffer of recipe ``rec`` and preprocessing ``zca``
    (:func:`zca_of` under ``sets``)."""
    return [(m, i) for m in METHODS for i in IPCS if recipe(m, i) == rec and zca_of(m, i, sets) == zca]


def trainer(rec: str, zca: bool, sets: Sequence[str] = ()) -> tuple[str, int]:
    """The (method, IPC) whose config trains the buffer of recipe ``rec`` and preprocessing ``zca``: the served
    method with the most epochs of its own (DATM's 100 for GSAM alpha 0.3), then the first of :data:`METHODS`;
    its smallest served IPC.

    Raises:
        ValueError: no row of the grid reads such a buffer.
    """
    rows = served(rec, zca, sets)
    if not rows:
        raise ValueError(f"no cell reads a {rec} buffer with preprocessing {preprocessing(zca)}")
    method = max(dict.fromkeys(m for m, _ in rows), key=lambda m: (method_defaults(m, IPCS[0])["buffer"]["epochs"],
                                                                   -METHODS.index(m)))
    return method, min(i for m, i in rows if m == method)


def read_epochs(rec: str, zca: bool, sets: Sequence[str] = ()) -> int:
    """The epochs a buffer of recipe ``rec`` and preprocessing ``zca`` needs for every cell it serves: the max
    over those rows of max_start_epoch + expert_epochs + 1 (an expert's epoch 0 is its initialisation)."""
    return max(d["max_start_epoch"] + d["expert_epochs"] + 1
               for d in (method_defaults(m, i)["distill"] for m, i in served(rec, zca, sets)))


def buffer_kinds() -> dict[tuple[str, bool], list[tuple[str, int]]]:
    """(recipe, zca) -> the (method, IPC) rows its buffers serve, for every buffer kind of the grid."""
    kinds: dict[tuple[str, bool], list[tuple[str, int]]] = {}
    for m in METHODS:
        for i in IPCS:
            kinds.setdefault((recipe(m, i), zca_of(m, i)), []).append((m, i))
    return kinds


#: --budget -> (experts, experts trained at once, distillation iterations, evaluation interval, evaluation nets),
#: None = the method's own. "short": the grid's budget, one for every cell, so that cells compare with each other
#: (minutes of an H100 per cell); "long": the paper's number of experts and MTT's 5000 iterations; "full": each
#: method's own budget (100 experts x 50 epochs for MTT, 100 for DATM; ATT's README runs 60000 iterations at
#: IPC 10): hours per cell.
#: "short" and "long" train each buffer for :func:`read_epochs` epochs, "full" for the trainer's own.
BUDGETS: dict[str, tuple[int, int, int, int, int] | None] = {"short": (20, 20, 1000, 500, 5),
                                                              "long": (100, 25, 5000, 500, 5), "full": None}


def sizes(budget: str) -> tuple[int, int, int, int, int]:
    """``budget``'s sizes in :data:`BUDGETS` (raises ValueError for "full", which has none: each method's own)."""
    found = BUDGETS[budget]
    if found is None:
        raise ValueError(f"the budget {budget!r} has no sizes of its own (each method's): pick short or long")
    return found


def budget_text(budget: str) -> str:
    """The budget in words, for the page and ``--help``."""
    if BUDGETS[budget] is None:
        return "each method's own budget"
    experts, _, iters, every, nets = sizes(budget)
    kinds = "; ".join(f"{kind_text(rec, zca)} for {rows_text(rows)}: {read_epochs(rec, zca)}"
                      for (rec, zca), rows in buffer_kinds().items())
    return (f"{experts} experts per buffer, one buffer per noise setting, arm, expert recipe and preprocessing "
            f"serving the cells that share them, trained for the epochs its longest reader needs (max over its "
            f"IPCs of max_start_epoch + expert_epochs + 1; {kinds}), {iters} distillation iterations, an "
            f"evaluation every {every} with {nets} nets, each method's own other settings (ZCA included)")


def kind_text(rec: str, zca: bool) -> str:
    """A buffer kind in words: ``SGD experts with ZCA``, ``GSAM (alpha 1) experts without ZCA``."""
    name = "SGD" if rec == "sgd" else f"GSAM (alpha {rec.removeprefix('gsam-a')})"
    return f"{name} experts {'with' if zca else 'without'} ZCA"


def rows_text(rows: Sequence[tuple[str, int]]) -> str:
    """(method, IPC) rows in words, methods of the same IPCs together: ``MTT and ATT at IPC 1 / 10``."""
    by_ipcs: dict[tuple[int, ...], list[str]] = {}
    for method in dict.fromkeys(m for m, _ in rows):
        by_ipcs.setdefault(tuple(i for m, i in rows if m == method), []).append(method.upper())
    return ", ".join(f"{' and '.join(ms)} at IPC {' / '.join(map(str, ipcs))}" for ipcs, ms in by_ipcs.items())


def budget_sets(budget: str, rec: str, zca: bool, sets: Sequence[str] = ()) -> list[str]:
    """The ``key=value`` settings of ``budget`` for a cell or buffer of recipe ``rec`` and preprocessing ``zca``
    (the cells :func:`served` under ``sets``)."""
    if BUDGETS[budget] is None:
        method, ipc = trainer(rec, zca, sets)
        return [f"buffer.epochs={method_defaults(method, ipc)['buffer']['epochs']}"]
    experts, group, iters, every, nets = sizes(budget)
    return [f"buffer.num_experts={experts}", f"buffer.experts_per_group={group}",
            f"buffer.epochs={read_epochs(rec, zca, sets)}", f"distill.iterations={iters}",
            f"distill.eval_every={every}", f"eval.num_eval={nets}"]


def switch_sets(cell: Cell) -> list[str]:
    """The ``key=value`` settings that switch off the parts of TAD ``cell``'s arm leaves out (Table 3): Reg off =
    ``tad.reg_weight=0`` (plain CE), OL off = ``tad.outer_loop=false`` and the two asymmetric-noise remedies of
    the division off, IL off = ``tad.inner_loop=false``; none for the noisy and tad arms; ``data.noise=null``
    for the two-stage arms (their labels are the cleaned ones, :func:`_inputs`)."""
    if cell.arm in TWO_STAGE_ARMS:
        return ["data.noise=null"]
    if cell.arm in ("noisy", "tad"):
        return []
    reg, outer, inner = cell.parts
    sets = [] if reg else ["tad.reg_weight=0"]
    if not outer:
        sets += ["tad.outer_loop=false", "tad.balance_classes=false", "tad.warmup_confidence_penalty=0"]
    return sets + ([] if inner else ["tad.inner_loop=false"])


def run_name(name: str, tag: str | None) -> str:
    """The run folder and record name of a cell or buffer under ``--tag``: ``<name>-<tag>``, or the name itself."""
    return f"{name}-{tag}" if tag else name


def seed_tag(tag: str | None, seed: int) -> str | None:
    """The tag of a run with training seed ``seed`` (``--seeds``): seed 0, the configs' own, keeps ``tag`` (the
    cell's or variant's record); another seed adds ``seed<N>`` (``...-tad-seed1``, ``...-tad-bal-seed1``)."""
    if seed == 0:
        return tag
    return f"{tag}-seed{seed}" if tag else f"seed{seed}"


def buffer_of(cell: Cell, sets: Sequence[str] = ()) -> str:
    """The name of the buffer ``cell`` distils from: ``<noise>-<arm>-<recipe>-<zca|raw>``, its preprocessing
    :func:`zca_of` under ``sets`` (Table 3's A and F share the noisy and tad arms' buffers)."""
    return (f"{cell.noise}-{cell.arm}-{recipe(cell.method, cell.ipc)}-"
            f"{preprocessing(zca_of(cell.method, cell.ipc, sets))}")


def _data_flags(cell: Cell, cifar_n: str | None) -> list[str]:
    base, rate = NOISES[cell.noise]
    flags = ["--config", str(CONFIGS / base)]
    if rate is not None:
        return flags + ["--noise-rate", str(rate)]
    if not cifar_n:
        raise SystemExit("the c10n-worst cells need --cifar-n PATH (the official CIFAR-10_human.pt)")
    return flags + ["--cifar-n", cifar_n]


def cleaning_dir(out: Path, noise: str) -> Path:
    """The two-stage cells' first stage for the label set ``noise``: the ``tad audit --detector cleanlab
    --write-pruned`` run (the ``cleanlab`` job of :func:`audit_commands`)."""
    return audit_dir(out) / f"{noise}-cleanlab"


def _inputs(cell: Cell, dataset: str, out: Path, cifar_n: str | None) -> list[str]:
    """The data options of ``cell``'s commands: its base config and noise, and ``--dataset``; a two-stage cell
    reads its first stage's output instead of noisy labels (:func:`cleaning_dir`): ``prune`` the dataset without
    the flagged samples (``pruned/<dataset>.npz``, its audited labels as ``given_label``), ``relabel`` the whole
    dataset with the suggested labels (``labels_cleaned.npz``, ``cleaned_label``)."""
    if cell.arm not in TWO_STAGE_ARMS:
        return [*_data_flags(cell, cifar_n), "--dataset", dataset]
    first = cleaning_dir(out, cell.noise)
    config = ["--config", str(CONFIGS / NOISES[cell.noise][0])]
    if cell.arm == "prune":
        pruned = str(first / "pruned" / f"{Path(dataset).name.removesuffix('.npz')}.npz")
        return config + ["--dataset", pruned, "--cifar-n", pruned, "--label-set", "given_label"]
    return config + ["--dataset", dataset, "--cifar-n", str(first / "labels_cleaned.npz"),
                     "--label-set", "cleaned_label"]


def _sets(*groups: Sequence[str]) -> list[str]:
    return [x for group in groups for s in group for x in ("--set", s)]


def command(cell: str, dataset: str, out: Path, cifar_n: str | None, budget: str, sets: Sequence[str] = (),
            tag: str | None = None, shared: bool = True) -> list[str]:
    """``cell``'s ``tad run`` command into ``out/<run_name>``: distilling from its shared buffer under
    ``out/buffers/`` (``shared``), else training its own. Settings: the base YAML < the method, IPC, noise and
    arm < ``budget`` < Table 3's switches < ``sets``."""
    c = cells()[cell]
    cmd = [sys.executable, "-m", "tad_plugin.cli", "run", *_inputs(c, dataset, out, cifar_n), "--method", c.method,
           "--ipc", str(c.ipc), "--tad" if c.tad else "--no-tad", _zca_flag(zca_of(c.method, c.ipc)),
           "--out", str(out / run_name(cell, tag))]
    if shared:
        cmd += ["--buffer", str(buffer_dir(out, buffer_of(c, sets), tag) / "buffer")]
    return cmd + _sets(budget_sets(budget, recipe(c.method, c.ipc), zca_of(c.method, c.ipc, sets), sets),
                       switch_sets(c), sets)


def _zca_flag(zca: bool) -> str:
    # explicit: an arrays file of another name than cifar10.npz would get no ZCA from the method's table
    return "--zca" if zca else "--no-zca"


def parse_buffer(buffer: str) -> tuple[str, str, str, bool]:
    """(noise, arm, recipe, zca) of a :func:`buffer_of` name."""
    m = re.fullmatch(r"(.+)-(noisy|tad|prune|relabel|[B-E])-(sgd|gsam-a[\d.]+)-(zca|raw)", buffer)
    if m is None:
        raise ValueError(f"not a buffer name: {buffer!r} (expected <noise>-<arm>-<recipe>-<zca|raw>)")
    return m[1], m[2], m[3], m[4] == "zca"


def buffer_dir(out: Path, buffer: str, tag: str | None = None) -> Path:
    """Where the shared buffer ``buffer`` is trained: ``out/buffers/<name>[-<tag>]`` (its experts in ``buffer/``)."""
    return out / "buffers" / run_name(buffer, tag)


def buffer_command(buffer: str, dataset: str, out: Path, cifar_n: str | None, budget: str,
                   sets: Sequence[str] = (), tag: str | None = None) -> list[str]:
    """The ``tad buffer`` command that trains the shared buffer ``buffer`` (a :func:`buffer_of` name) with the
    config of its recipe's :func:`trainer` and the arm's switches."""
    noise, arm, rec, zca = parse_buffer(buffer)
    method, ipc = trainer(rec, zca, sets)
    c = Cell(method, ipc, noise, arm)
    return [sys.executable, "-m", "tad_plugin.cli", "buffer", *_inputs(c, dataset, out, cifar_n), "--method", method,
            "--ipc", str(ipc), "--tad" if c.tad else "--no-tad", _zca_flag(zca),
            "--out", str(buffer_dir(out, buffer, tag)),
            *_sets(budget_sets(budget, rec, zca, sets), switch_sets(c), sets)]


#: The label-audit detectors ``--audit`` runs beside a TAD buffer of MTT's expert recipe with ZCA (the detection
#: table of docs/label-audit.md): TAD's experts of that buffer (no training), 5 TAD experts of their own (as many
#: models as cleanlab's folds: the same GPU time), and cleanlab on 5-fold out-of-sample probabilities.
AUDIT_DETECTORS = ("tad20", "tad5", "cleanlab")


def audit_dir(out: Path) -> Path:
    """Where ``--audit``'s runs go: ``out/audit/<label set>-<detector>``."""
    return out / "audit"


def audit_commands(buffer: str, dataset: str, out: Path, cifar_n: str | None, budget: str,
                   sets: Sequence[str] = ()) -> dict[str, list[str]]:
    """The ``tad audit`` jobs of the label set of the shared buffer ``buffer`` (``audit-<noise>-<detector>``, one
    per :data:`AUDIT_DETECTORS`), with the buffer's own settings; empty unless it is a TAD buffer of the plain-SGD
    recipe with ZCA (MTT's and ATT's experts at IPC 1 and 10)."""
    noise, arm, rec, zca = parse_buffer(buffer)
    if arm != "tad" or rec != "sgd" or not zca:
        return {}

    extra = {"tad20": ["--buffer", str(buffer_dir(out, buffer) / "buffer")],
             "tad5": ["--set", "buffer.num_experts=5", "--set", "buffer.experts_per_group=5"],
             "cleanlab": ["--detector", "cleanlab", "--write-pruned"]}
    jobs = {}
    for detector in AUDIT_DETECTORS:
        cmd = buffer_command(buffer, dataset, out, cifar_n, budget, sets)
        cmd[cmd.index("buffer")] = "audit"
        cmd[cmd.index("--out") + 1] = str(audit_dir(out) / f"{noise}-{detector}")
        jobs[f"audit-{noise}-{detector}"] = cmd + extra[detector]
    return jobs


def collect_audit(name: str, out: Path, records: Path) -> None:
    """Copy the finished audit job ``name``'s ``result_audit.json`` to ``<records>/audit/<label set>-<detector>/``
    and rewrite the detection table (``<records>/audit/detection.json`` and ``.md``) from every audit there."""
    from tad_plugin.engine.audit import write_detection_table
    from tad_plugin.files import atomic_write

    run = name.removeprefix("audit-")
    data = (audit_dir(out) / run / "result_audit.json").read_bytes()
    dest = records / "audit" / run
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / "result_audit.json", _writer(data))
    runs = sorted(p.parent for p in (records / "audit").glob("*/result_audit.json"))
    write_detection_table(runs, records / "audit" / "detection")
    print(f"result: {dest / 'result_audit.json'}; detection table {records / 'audit' / 'detection.md'}", flush=True)


def buffer_ready(path: Path, experts: int) -> bool:
    """Whether the trajectory store ``path`` holds at least ``experts`` finished experts."""
    from tad_plugin.engine.trajectories import TrajectoryStore

    try:
        return len(TrajectoryStore.open(path).finished()) >= experts
    except Exception:  # missing, partly written or unreadable: not ready
        return False


def needs_extractor(cell_or_buffer: str, sets: Sequence[str]) -> bool:
    """Whether a cell's (or buffer's) experts run the inner loop, which embeds with the SimCLR extractor."""
    from tad_plugin.engine.config import apply_overrides

    arm = cells()[cell_or_buffer].arm if cell_or_buffer in cells() else parse_buffer(cell_or_buffer)[1]
    if not arm_parts(arm)[2]:
        return False
    return apply_overrides({}, list(sets)).get("tad", {}).get("inner_loop", True) is not False


# ---------------------------------------------------------------------- running

def gpu_ids(spec: str | None) -> list[str]:
    """The CUDA device indices to spread jobs over: ``spec`` ("0,1"), else every visible GPU, else none."""
    if spec:
        return [g.strip() for g in spec.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def first_gpu_env(spec: str | None) -> dict[str, str]:
    """This process's environment for a job in the foreground: ``CUDA_VISIBLE_DEVICES`` = the first GPU of
    ``spec`` ("1,0" -> "1"), or unchanged when no ``--gpus`` was given."""
    env = dict(os.environ)
    if spec:
        env["CUDA_VISIBLE_DEVICES"] = gpu_ids(spec)[0]
    return env


#: The exit code :func:`run_parallel` gives a job it did not start because a job it waits for failed.
SKIPPED = -1


def run_parallel(jobs: dict[str, list[str]], logs: Path, slots: int, gpus: list[str],
                 on_done: Callable[[str], None] | None = None, poll_s: float = 2.0,
                 after: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Run the commands of ``jobs`` (name -> argv), at most ``slots`` at once per GPU; returns name -> exit code.

    ``after[name]`` lists jobs of ``jobs`` that must have exited with 0 before ``name`` starts; if one of them
    fails, ``name`` is not started and gets :data:`SKIPPED`. Of the jobs free to start, the earliest in ``jobs``'
    order starts first (list a buffer's cells right after it and they take the next free slots once it is done).

    Each job gets ``CUDA_VISIBLE_DEVICES`` set to the GPU with the fewest running jobs (left unset when ``gpus``
    is empty: one CPU queue of ``slots``), writes stdout and stderr to ``logs/<name>.log``, and is announced
    when it starts and ends. ``on_done(name)`` runs after each job that exits with 0 (if it raises, the job
    counts as failed with code 1). A job that fails does not stop the others; the caller decides what a non-zero
    code means. At the end a table of what ran where (GPU, start, end, wall time) is printed and written to
    ``logs/schedule.md``.

    Raises:
        ValueError: ``slots`` < 1, or ``after`` names a job that is not in ``jobs``.
    """
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    after = {name: list(deps) for name, deps in (after or {}).items() if deps}
    unknown = sorted({d for deps in after.values() for d in deps} - set(jobs))
    if unknown:
        raise ValueError(f"after names jobs that are not in jobs: {', '.join(unknown)}")
    logs.mkdir(parents=True, exist_ok=True)
    queues: list[str | None] = [*gpus] or [None]
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, str | None, Any, float]] = {}  # process, GPU, log file, start
    codes: dict[str, int] = {}
    times: dict[str, tuple[str | None, float, float]] = {}
    start = time.monotonic()
    while pending or running:
        for name, (proc, gpu, log, began) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            codes[name] = proc.returncode
            times[name] = (gpu, began, time.monotonic() - start)
            where = f" on GPU {gpu}" if gpu is not None else ""
            print(f"[{time.monotonic() - start:7.0f} s] {name}{where}: exit {proc.returncode} "
                  f"(log {logs / (name + '.log')})", flush=True)
            if proc.returncode == 0 and on_done is not None:
                try:
                    on_done(name)
                except Exception as exc:  # e.g. no result file: report it, keep the other jobs going
                    codes[name] = 1
                    print(f"{name}: finished, but collecting its result failed: {exc}", flush=True)
        for name in list(pending):
            failed = [d for d in after.get(name, ()) if d in codes and codes[d] != 0]
            if failed:
                pending.remove(name)
                codes[name] = SKIPPED
                print(f"[{time.monotonic() - start:7.0f} s] {name}: not started ({', '.join(failed)} failed)",
                      flush=True)
        load = {g: sum(1 for _, q, _, _ in running.values() if q == g) for g in queues}
        while pending and min(load.values()) < slots:
            startable = [n for n in pending if all(codes.get(d) == 0 for d in after.get(n, ()))]
            if not startable:
                break
            gpu = min(queues, key=lambda g: load[g])
            name = startable[0]
            pending.remove(name)
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = open(logs / f"{name}.log", "w")
            began = time.monotonic() - start
            running[name] = (subprocess.Popen(jobs[name], stdout=log, stderr=subprocess.STDOUT, env=env), gpu, log,
                             began)
            load[gpu] += 1
            print(f"[{began:7.0f} s] {name} started" + (f" on GPU {gpu}" if gpu is not None else "")
                  + f": {' '.join(jobs[name])}", flush=True)
        if running:
            time.sleep(poll_s)
    table = schedule_lines(times, codes)
    print("\n".join(table), flush=True)
    from tad_plugin.files import atomic_write

    text = "\n".join(table) + "\n"
    atomic_write(logs / "schedule.md", lambda f: f.write(text.encode()))
    return codes


def schedule_lines(times: dict[str, tuple[str | None, float, float]], codes: dict[str, int]) -> list[str]:
    """What ran where, as a Markdown table: a row per job (GPU, start and end in seconds from the first start,
    wall time in minutes, exit code) in the order they started, then the jobs that did not start."""
    lines = ["| job | GPU | start (s) | end (s) | wall (min) | exit |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, (gpu, began, ended) in sorted(times.items(), key=lambda kv: kv[1][1]):
        lines.append(f"| {name} | {gpu if gpu is not None else '-'} | {began:.0f} | {ended:.0f} | "
                     f"{(ended - began) / 60:.1f} | {codes[name]} |")
    lines += [f"| {name} | - | - | - | - | not started |" for name in codes if name not in times]
    return lines


def collect(name: str, out: Path, results: Path, cell: Cell | None = None, extra: dict | None = None) -> None:
    """Copy a finished run's result JSON (``out/<name>/result_run.json``) to ``<results>/<name>.json``,
    atomically, with a ``cell`` entry added when ``cell`` is given: its method, IPC, noise, arm, TAD's parts and
    ``extra`` (the buffer, the budget); and the trust report its record names (``.json``, ``.png``) as
    ``<name>.trust_report.*``."""
    from tad_plugin.files import atomic_write

    results.mkdir(parents=True, exist_ok=True)
    record = json.loads((out / name / "result_run.json").read_text())
    if cell is not None:
        reg, outer, inner = cell.parts
        record["cell"] = {"name": cell.name, "method": cell.method, "ipc": cell.ipc, "noise": cell.noise,
                          "arm": cell.arm, "reg": reg, "outer_loop": outer, "inner_loop": inner, **(extra or {})}
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(results / f"{name}.json", lambda f: f.write(text.encode()))
    print(f"result: {results / (name + '.json')}", flush=True)
    report = record.get("stages", {}).get("buffer", {}).get("trust_report")
    for suffix in (".json", ".png"):  # the experts' trust report (in the shared buffer), beside the record
        src = Path(report).with_suffix(suffix) if report else None
        if src is not None and src.is_file():
            data = src.read_bytes()
            atomic_write(results / f"{name}.trust_report{suffix}", _writer(data))


def _writer(data: bytes) -> Callable[[Any], Any]:
    """A writer of ``data`` for :func:`~tad_plugin.files.atomic_write`."""
    return lambda f: f.write(data)


def recorded_time(cell: str, results: Path) -> str:
    """`` (recorded: <minutes> min on <device>, <budget>)`` from the cell's committed record, or "" without one:
    what a run of the same budget costs."""
    path = results / f"{record_name(cell, results)}.json"
    if not path.is_file():
        return ""
    rec = json.loads(path.read_text())
    if "wall_time_s" not in rec:
        return ""
    reused = " (experts reused from another run: distillation only)" if rec.get("stages", {}).get("buffer", {}).get(
        "reused") else ""
    return (f"  (recorded: {rec['wall_time_s'] / 60:.1f} min on {rec.get('device', '?')}{reused}, "
            f"{run_budget(rec)})")


#: Seconds of SimCLR training when a TAD buffer needs the default extractor and it does not exist yet: the
#: recorded 10-minute recipe (80.31% kNN@10 on an H100, results/features_probe/features_cifar10_crop008.md).
FEATURES_BUDGET_S = 590.0


def extractor_to_train(names: Sequence[str], dataset: str, sets: Sequence[str]) -> Path | None:
    """The extractor file that must be trained before the buffers or cells ``names`` run: the default one of
    ``dataset`` (where ``tad features train`` writes it and ``tad run`` looks for it) when one of them runs the
    inner loop (:func:`needs_extractor`), no ``--set tad.features=`` names another, and the file is missing;
    None otherwise.

    Raises:
        SystemExit: ``--set tad.features=PATH`` names a file that does not exist (a typo is not worth ten
            minutes of training; the message gives the command that would make it).
    """
    if not any(needs_extractor(name, sets) for name in names):
        return None
    from tad_plugin.engine.config import apply_overrides
    from tad_plugin.features import default_extractor_path

    chosen = apply_overrides({}, list(sets)).get("tad", {}).get("features")  # as tad run will read it
    if chosen is not None:
        if chosen == "pixels" or Path(chosen).is_file():
            return None
        raise SystemExit(f"--set tad.features={chosen}: no such extractor file. Train it with `tad features "
                         f"train --dataset {dataset} --out {chosen}`, or leave tad.features unset and this "
                         f"script trains the default one first")

    path = default_extractor_path(dataset)
    return None if path.is_file() else path


#: Seconds a TAD buffer waits for the extractor beyond its training budget: the extractor job's start
#: (imports, data, compilation), its final kNN evaluation and the write; the wait begins only when the inner
#: loop first needs the features (after the warm-up), so this bounds it from above.
FEATURES_MARGIN_S = 300.0


def features_wait(seconds: float, sets: Sequence[str] = ()) -> float:
    """``tad.features_wait_s`` for a TAD buffer that starts with an extractor trained for ``seconds`` beside
    it: the value ``sets`` give, else ``seconds`` + :data:`FEATURES_MARGIN_S`."""
    from tad_plugin.engine.config import apply_overrides

    chosen = apply_overrides({}, list(sets)).get("tad", {}).get("features_wait_s")
    return float(seconds + FEATURES_MARGIN_S if chosen is None else chosen)


def extractor_command(path: Path, dataset: str, seconds: float) -> list[str]:
    """``tad features train`` for ``seconds`` into ``path`` (resuming from the state kept beside it, if any)."""
    from tad_plugin.features.train import state_path_for

    cmd = [sys.executable, "-m", "tad_plugin.cli", "features", "train", "--dataset", dataset, "--out", str(path),
           "--time-budget", str(seconds), "--epochs", "1000", "--eval-every", "50"]
    return cmd + (["--resume"] if state_path_for(path).is_file() else [])


def plan(args: argparse.Namespace) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, tuple]]:
    """The jobs of ``args.cell``: ``(jobs, after, cells)``. ``jobs`` (name -> argv) holds the extractor when a
    buffer to train needs it (``extractor``), each shared buffer not yet finished under ``--out``
    (``buffer-<name>``), each followed by the cells that read it (``<cell>[-<tag>]``); ``after`` what each
    waits for (a cell its buffer; no job waits for the extractor: the buffers that need it start beside it
    with ``tad.features_wait_s`` from :func:`features_wait`); ``cells`` maps a cell job to ``(Cell, buffer
    name, budget)`` for its record."""
    out, tag = Path(args.out), args.tag
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", tag):
        raise SystemExit(f"--tag {tag!r}: use letters, digits, '_' and '.' only (it becomes part of file names)")
    if any(seed < 0 for seed in args.seeds):
        raise SystemExit(f"--seeds {args.seeds}: seeds are >= 0")
    requested = resolve_cells(args.cell)
    experts = (BUDGETS[args.budget] or (100,))[0]
    groups: dict[str, list[str]] = {}  # buffer job (or "" for a finished buffer) -> its cell jobs
    jobs: dict[str, list[str]] = {}
    buffers: dict[str, tuple[str, list[str]]] = {}  # buffer job -> (buffer name, argv)
    after: dict[str, list[str]] = {}
    meta: dict[str, tuple] = {}
    for seed in dict.fromkeys(args.seeds):
        t = seed_tag(tag, seed)
        sets = list(args.set) + ([f"seed={seed}"] if seed else [])
        for cell in requested:
            c = cells()[cell]
            buf = buffer_of(c, args.set)
            job = f"buffer-{run_name(buf, t)}"
            if job not in buffers and not buffer_ready(buffer_dir(out, buf, t) / "buffer", experts):
                buffers[job] = (buf, buffer_command(buf, args.dataset, out, args.cifar_n, args.budget, sets, t))
            name = run_name(cell, t)
            jobs[name] = command(cell, args.dataset, out, args.cifar_n, args.budget, sets, t)
            meta[name] = (c, run_name(buf, t), args.budget)
            groups.setdefault(job if job in buffers else "", []).append(name)
            if job in buffers:
                after[name] = [job]
    cleaning: dict[str, list[str]] = {}  # the two-stage buffers' first stage (cleanlab) not yet done under --out
    for job, (buf, _) in buffers.items():
        noise, arm, _, _ = parse_buffer(buf)
        first = cleaning_dir(out, noise)
        if arm in TWO_STAGE_ARMS and not ((first / "labels_cleaned.npz").is_file() and (first / "pruned").is_dir()):
            name = f"audit-{noise}-cleanlab"
            cleaning[name] = audit_commands(f"{noise}-tad-sgd-zca", args.dataset, out, args.cifar_n, args.budget,
                                            args.set)[name]
            after[job] = [name]
    extractor = extractor_to_train([buf for buf, _ in buffers.values()], args.dataset, args.set)
    ordered: dict[str, list[str]] = {}
    wait = features_wait(args.features_budget, args.set)
    if extractor is not None:
        print(f"the TAD buffers' inner loop embeds with the SimCLR extractor {extractor}, which does not exist yet: "
              f"it trains ({args.features_budget:.0f} s) beside the buffers, and the buffers that need it wait up "
              f"to {wait:.0f} s for it when their inner loop first does", flush=True)
        ordered["extractor"] = extractor_command(extractor, args.dataset, args.features_budget)
    for job, (buf, cmd) in buffers.items():
        ordered.update({dep: cleaning[dep] for dep in after.get(job, ()) if dep in cleaning})
        waits = extractor is not None and needs_extractor(buf, args.set) and f"tad.features_wait_s={wait:g}"
        ordered[job] = cmd + (["--set", waits] if waits and waits not in args.set else [])
        ordered.update({name: jobs[name] for name in groups.get(job, [])})
    ordered.update({name: jobs[name] for name in groups.get("", [])})
    if args.audit:
        if tag is not None or args.seeds != [0]:
            raise SystemExit("--audit runs the detection table's audits beside the cells' own buffers: drop --tag "
                             "and --seeds")
        recorded = grid_records(args.results) / "audit"
        for buf in dict.fromkeys(buffer_of(cells()[cell], args.set) for cell in requested):
            job = f"buffer-{buf}"
            for name, cmd in audit_commands(buf, args.dataset, out, args.cifar_n, args.budget, args.set).items():
                if (recorded / name.removeprefix("audit-") / "result_audit.json").is_file():
                    continue
                if name.endswith("-tad20") and job in buffers:
                    after[name] = [job]
                elif name.endswith("-tad5") and extractor is not None:
                    cmd = cmd + ["--set", f"tad.features_wait_s={wait:g}"]
                ordered[name] = cmd
    return ordered, after, meta


def run_cells(args: argparse.Namespace) -> int:
    """Run the ``--cell`` cells and the buffers they need (one job in the foreground, several through
    :func:`run_parallel`); 0 if all passed."""
    out = Path(args.out)
    jobs, after, meta = plan(args)
    for name, (_, buf, _) in meta.items():
        print(f"{name} distils from the experts of {buf} ({buffer_dir(out, buf) / 'buffer'})", flush=True)

    def done(name: str) -> None:
        if name in meta:
            cell, buf, budget = meta[name]
            collect(name, out, grid_records(args.results), cell, {"buffer": buf, "budget": budget})
        elif name.startswith("audit-"):
            collect_audit(name, out, grid_records(args.results))

    if len(jobs) == 1 and args.jobs == 1:  # in the foreground, on the first GPU of --gpus (if given)
        (name, cmd), = jobs.items()
        env = first_gpu_env(args.gpus)
        print(" ".join(cmd) + (f"  (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if args.gpus else ""),
              flush=True)
        code = subprocess.run(cmd, env=env).returncode
        if code != 0:
            print(f"FAILED {name} (exit {code}): its output is above", file=sys.stderr)
            return 1
        done(name)
        return 0
    codes = run_parallel(jobs, out / "logs", args.jobs, gpu_ids(args.gpus), on_done=done, after=after)
    failed = sorted(c for c, rc in codes.items() if rc not in (0, SKIPPED))
    for name in failed:
        print(f"FAILED {name} (exit {codes[name]}); last lines of {out / 'logs' / (name + '.log')}:", file=sys.stderr)
        lines = (out / "logs" / f"{name}.log").read_text(errors="replace").replace("\r", "\n").splitlines()
        print("\n".join("    " + line for line in lines[-12:]), file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------- the queue

#: The order in which the grid's cells are run: (batch title, which cells); a cell goes to the first batch
#: that takes it.
QUEUE_ORDER: tuple[tuple[str, Callable[[Cell], bool]], ...] = (
    ("MTT: IPC 1 / 10 / 50, symmetric and asymmetric noise at 20% and 40%",
     lambda c: c.method == "mtt" and c.noise != "c10n-worst" and c.arm not in TWO_STAGE_ARMS),
    ("Table 3: DATM at IPC 50, asymmetric 20% and 40%, configurations A-F",
     lambda c: (c.method, c.ipc) == ABLATION_CELLS[:2] and c.noise in ABLATION_CELLS[2]),
    ("ATT from MTT's buffers (distillation only)", lambda c: c.method == "att" and c.noise != "c10n-worst"),
    ("CIFAR-10N worst: MTT and ATT", lambda c: c.noise == "c10n-worst" and c.method in ("mtt", "att")),
    ("Two-stage baselines: cleanlab, then MTT", lambda c: c.arm in TWO_STAGE_ARMS),
    ("FTD and DATM rows", lambda c: c.method in ("ftd", "datm")),
)


def finished(cell: str, results: Path) -> bool:
    """Whether ``cell`` has a record (its own or :data:`LEGACY_RECORDS`') that reached its final evaluation."""
    path = results / f"{record_name(cell, results)}.json"
    return path.is_file() and "test_acc_mean" in json.loads(path.read_text()).get("results", {})


#: Planning figures for QUEUE.md's batches, one H100 (fp32 experts): seconds per expert-epoch of a noisy buffer
#: with the GPU to itself (buffers and the extractor saturate the GPU and share it evenly); a buffer with TAD's
#: outer loop costs TAD_BUFFER_FACTOR times a noisy one (benchmarks/benchmark_tad_overhead.py: the loss pass
#: and the batched division cost about what training on the trusted subset saves), and GSAM experts
#: GSAM_FACTOR times SGD ones (two forward-backward passes a step); a cell's distillation and evaluations at
#: the short budget's 1000 iterations, beside other jobs; the inner loop's one-time work (the anchors'
#: distillation and the feature embedding, once per buffer); the two-stage cells' first stage (cleanlab's 5
#: fold models, one at a time); the extractor's start and final evaluation beyond its training budget; the window
#: a batch must fit.
EXPERT_EPOCH_S = 0.35
TAD_BUFFER_FACTOR = 1.0
GSAM_FACTOR = 2.0
DISTILL_S = {1: 300.0, 10: 300.0, 50: 540.0}
ANCHORS_S = 110.0
CLEANLAB_S = 300.0
EXTRACTOR_EXTRA_S = 60.0
WINDOW_S = 25 * 60.0
#: Jobs at once in a batch, and the buffers a batch trains: 80 GB holds two 20-expert buffers at once, not four;
#: the extractor is the third job.
QUEUE_JOBS = 3
QUEUE_BUFFERS = 2


@dataclass
class _SimJob:
    name: str
    saturates: bool  # shares the GPU with the other saturating jobs (buffers, extractor)
    work: float  # seconds with the GPU to itself (saturating) or wall seconds (distillation, extractor)
    after: str | None = None  # the job it waits for
    pause_at: float | None = None  # work done when it needs the extractor (a TAD buffer's anchors)
    done: float = 0.0


def batch_jobs(names: Sequence[str], budget: str = "short", features_s: float = FEATURES_BUDGET_S,
               extractor: bool = True) -> list[_SimJob]:
    """The jobs a ``--cell`` run of ``names`` starts on a fresh machine (every buffer trained, the extractor
    too when a buffer needs it and ``extractor``), in :func:`plan`'s order, with :func:`estimate`'s costs."""
    from tad_plugin.cli_options import add_settings_options
    from tad_plugin.runs import config_from_args
    from tad_plugin.trust_loop import Schedule

    experts = sizes(budget)[0]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(buffer_of(cells()[name]), []).append(name)
    needs = extractor and any(needs_extractor(b, ()) for b in groups)
    jobs = [_SimJob("extractor", True, features_s + EXTRACTOR_EXTRA_S)] if needs else []
    for buf, members in groups.items():
        _, arm, rec, zca = parse_buffer(buf)
        epochs = read_epochs(rec, zca)
        _, outer, inner = arm_parts(arm)
        train = (experts * epochs * EXPERT_EPOCH_S * (TAD_BUFFER_FACTOR if outer else 1)
                 * (GSAM_FACTOR if rec.startswith("gsam") else 1))
        work = train + (ANCHORS_S if inner else 0.0)
        pause = None
        if needs and needs_extractor(buf, ()):
            cmd = buffer_command(buf, "cifar10", Path("runs"), "CIFAR-10_human.pt", budget)
            settings = argparse.ArgumentParser()  # the options of `tad buffer`
            add_settings_options(settings)
            schedule = Schedule.of(config_from_args(settings.parse_args(cmd[cmd.index("buffer") + 1:])).tad)
            first = next((t for t in range(epochs) if schedule.recalibrates(t)), epochs)  # features first needed
            pause = train * first / epochs
        stage_one = None
        if arm in TWO_STAGE_ARMS:  # the first stage (cleanlab), once per noise setting
            stage_one = f"audit-{parse_buffer(buf)[0]}-cleanlab"
            if all(j.name != stage_one for j in jobs):
                jobs.append(_SimJob(stage_one, False, CLEANLAB_S))
        jobs.append(_SimJob(f"buffer-{buf}", True, work, after=stage_one, pause_at=pause))
        jobs += [_SimJob(n, False, DISTILL_S[cells()[n].ipc], after=f"buffer-{buf}") for n in members]
    return jobs


def estimate(jobs: Sequence[_SimJob], slots: int = QUEUE_JOBS, step: float = 1.0) -> float:
    """Seconds until the last of ``jobs`` ends on one GPU, started as :func:`run_parallel` starts them (``slots``
    at once, the earliest free job first): the saturating jobs share the GPU evenly (the extractor trains for its
    wall-clock budget whatever its share), a TAD buffer stops at its ``pause_at`` until the extractor ends, a
    distillation takes its wall seconds."""
    jobs = [_SimJob(**{**j.__dict__, "done": 0.0}) for j in jobs]
    ended: set[str] = set()
    running: list[_SimJob] = []
    pending = list(jobs)
    t = 0.0
    while pending or running:
        for job in [j for j in pending if j.after is None or j.after in ended][:max(0, slots - len(running))]:
            pending.remove(job)
            running.append(job)
        if not running:
            raise ValueError("a job waits for one that is not in the batch")
        paused = [j for j in running if j.pause_at is not None and j.done >= j.pause_at and "extractor" not in ended]
        sharing = [j for j in running if j.saturates and j not in paused and j.name != "extractor"]
        gpu = len(sharing) + any(j.name == "extractor" for j in running)
        for j in running:
            if j in paused:
                continue
            j.done += step if not j.saturates or j.name == "extractor" else step / gpu
        t += step
        for j in [j for j in running if j.done >= j.work - 1e-9]:
            running.remove(j)
            ended.add(j.name)
    return t


def batches(names: Sequence[str], budget: str = "short", window: float = WINDOW_S) -> list[tuple[list[str], float]]:
    """``names`` (cells in the queue's order) cut into batches for one GPU window each, with their
    :func:`estimate`: the cells that share buffers of a noise setting, recipe and preprocessing go together with
    both arms (a noisy cell beside its TAD pair) while the estimate fits ``window``; a group that does not fit
    alone is split by arm; a single arm that still does not fit gets a batch of its own (its estimate says it).
    A batch trains at most :data:`QUEUE_BUFFERS` buffers (GPU memory)."""
    def fits(names: list[str]) -> tuple[bool, float]:
        took = estimate(batch_jobs(names, budget))
        return took <= window and len({buffer_of(cells()[n]) for n in names}) <= QUEUE_BUFFERS, took

    units: dict[tuple, list[str]] = {}
    for name in names:
        c = cells()[name]
        _, _, rec, zca = parse_buffer(buffer_of(c))
        units.setdefault((c.noise, rec, zca), []).append(name)
    todo = list(units.values())
    out: list[tuple[list[str], float]] = []
    current: list[str] = []
    while todo:
        unit = todo.pop(0)
        ok, took = fits(current + unit)
        if ok:
            current += unit
            continue
        if current:
            out.append((current, estimate(batch_jobs(current, budget))))
            current = []
            todo.insert(0, unit)
            continue
        arms = list(dict.fromkeys(cells()[n].arm for n in unit))
        if len(arms) > 1 and (took > window or len(unit) > 1):
            todo[:0] = [[n for n in unit if cells()[n].arm == a] for a in arms]
            continue
        out.append((unit, took))
    if current:
        out.append((current, estimate(batch_jobs(current, budget))))
    return out


def with_riders(names: list[str], took: float, candidates: Sequence[str], budget: str = "short",
                window: float = WINDOW_S) -> tuple[list[str], float]:
    """``names`` (a batch of :func:`batches`) with each of ``candidates`` (cells of later queue sections, in
    order) that reads one of the batch's buffers added while the estimate stays within ``window`` (or within
    ``took`` for a batch already over it): a buffer lives on the machine that trained it only, so a cell
    distilled from it in the same batch costs its distillation alone, later a second training of the buffer.
    Returns the batch and its estimate."""
    bufs = {buffer_of(cells()[n]) for n in names}
    for cand in candidates:
        if buffer_of(cells()[cand]) in bufs:
            trial = estimate(batch_jobs(names + [cand], budget))
            if trial <= max(window, took):
                names, took = names + [cand], trial
    return names, took


def queue(results: Path, budget: str = "short") -> str:
    """The queue page (Markdown): the cells without a finished record, in :data:`QUEUE_ORDER`'s sections, cut
    into :func:`batches` of one GPU window each, with the command and the estimated time of each."""
    grid = cells()
    left = [n for n in grid if not finished(n, results)]
    lines = ["# CIFAR-10 grid: what is left", "",
             "Generated by `python reproduction/reproduce_cifar10.py --queue` from the cells without a finished "
             f"record in this folder: {len(left)} of {len(grid)} cells left. Budget: `--budget {budget}` "
             f"({budget_text(budget)}).", "",
             f"Each batch is one command for one H100 for at most {WINDOW_S / 60:.0f} minutes, on a fresh machine: it "
             "trains the shared buffers its cells read (and the SimCLR extractor when a TAD buffer needs it, beside "
             "them), distils each cell as soon as its buffer is done, and writes the records; commit them after "
             "each batch. The estimate assumes a noisy 20-expert buffer at "
             f"{EXPERT_EPOCH_S} s per expert-epoch with the GPU to itself (saturating jobs share it), a TAD buffer "
             f"at {TAD_BUFFER_FACTOR}x that plus {ANCHORS_S:.0f} s for its anchors, waiting for the extractor where "
             f"its inner loop first needs it, the extractor's {FEATURES_BUDGET_S:.0f} s, and "
             + ", ".join(f"{DISTILL_S[i] / 60:.0f} min" for i in IPCS) + " per IPC 1 / 10 / 50 distillation; "
             "a batch marked `over the window` does not fit and needs a shorter budget or a larger GPU share. "
             "`--audit` on a batch with a TAD buffer of MTT's recipe with ZCA adds the label-audit detection rows "
             "of its label set (a few minutes; docs/label-audit.md).", ""]
    taken: set[str] = set()
    rode: dict[str, int] = {}  # a cell of a later section -> the batch it rides in
    number = 0
    for section, (title, takes) in enumerate(QUEUE_ORDER, 1):
        part = [n for n in left if n not in taken and takes(grid[n])]
        taken.update(part)
        lines += [f"## {section}. {title}", ""]
        earlier = sorted({rode[n] for n in left if takes(grid[n]) and n in rode})
        if earlier:
            lines += [f"{'Some' if part else 'All'} of its cells run in batch{'es' if len(earlier) > 1 else ''} "
                      f"{', '.join(map(str, earlier))} above, beside the cells whose buffers they read.", ""]
        if not part:
            lines += [] if earlier else ["Done.", ""]
            continue
        if BUDGETS[budget] is None:  # no estimate: one command per noise setting
            cut: list[tuple[list[str], float | None]] = [([n for n in part if grid[n].noise == noise], None)
                                                          for noise in NOISES]
        else:
            cut = []
            for own, alone in batches(part, budget):
                joined, took_all = with_riders(own, alone, [n for n in left if n not in taken], budget)
                taken.update(joined)
                cut.append((joined, took_all))
        for names, took in cut:
            if not names:
                continue
            number += 1
            rode.update((n, number) for n in names if n not in part)
            bufs = list(dict.fromkeys(buffer_of(grid[n]) for n in names))
            c10n = " --cifar-n CIFAR-10_human.pt" if any(grid[n].noise == "c10n-worst" for n in names) else ""
            when = "" if took is None else f", about {took / 60:.0f} min" + (
                "" if took <= WINDOW_S else f" (over the window; about "
                f"{estimate(batch_jobs(names, budget, extractor=False)) / 60:.0f} min with an extractor carried in "
                "and named by `--set tad.features=PATH`)"
                if any(j.name == "extractor" for j in batch_jobs(names, budget))
                else " (over the window)")
            riders = sum(n not in part for n in names)
            also = f" ({riders} of them of later sections, reading the same buffers)" if riders else ""
            lines += [f"- batch {number}: {len(names)} cell{'s' if len(names) > 1 else ''}{also}{when}; buffers "
                      f"{', '.join(f'`{b}`' for b in bufs)}", "",
                      "  ```", f"  python reproduction/reproduce_cifar10.py --budget {budget} --dataset "
                      f"cifar10.npz{c10n} --gpus 0 --jobs {QUEUE_JOBS} \\",
                      " \\\n".join("    " + " ".join(f"--cell {n}" for n in names[i:i + 3])
                                   for i in range(0, len(names), 3)), "  ```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- page helpers


#: Settings of our TAD that the paper's does not have, with the value that means "as the paper".
PAPER_TAD: dict[str, dict[str, object]] = {
    "tad": {"balance_classes": False, "warmup_confidence_penalty": 0.0, "recall_once": False, "split": "per-expert",
            "loss_average": 1},
    "distill": {"label_temperature": 1.0}}


def beyond_paper(record: dict | None) -> list[str]:
    """``section.key=value`` for each setting of a record's config that departs from the paper's TAD."""
    cfg = (record or {}).get("config", {})
    return [f"{section}.{key}={cfg[section][key]}" for section, keys in PAPER_TAD.items() for key, paper in keys.items()
            if key in cfg.get(section, {}) and cfg[section][key] != paper]


def short_budget(record: dict) -> str:
    """``experts x epochs, iterations it`` of a record (the evaluation nets and the rest: :func:`run_budget`)."""
    cfg = record.get("config", {})
    b, d = cfg.get("buffer", {}), cfg.get("distill", {})
    return f"{b.get('num_experts')} x {b.get('epochs')}, {d.get('iterations')} it"


def finished_clean(results: Path) -> list[tuple[str, dict]]:
    """The clean-label MTT records under ``<results>/clean`` that reached a final accuracy, as ``(name, record)``."""
    done = [(p.stem, json.loads(p.read_text())) for p in sorted((results / "clean").glob("*.json"))]
    return [(n, r) for n, r in done if "test_acc_mean" in r.get("results", {})]


def best_clean(results: Path) -> tuple[str, dict] | None:
    """The finished clean-label MTT record under ``<results>/clean`` with the highest final accuracy, as
    ``(name, record)``; None when there is none."""
    done = finished_clean(results)
    return max(done, key=lambda nr: nr[1]["results"]["test_acc_mean"]) if done else None


def clean_gap_lines(results: Path) -> list[str]:
    """A table of every finished MTT + TAD record in ``results`` against the finished clean-label MTT record of
    the same budget and IPC (:func:`run_budget`; clean records stopped early or noted as ``diverged`` do not
    count), beside the paper's gap for its noise and IPC; [] when none matches.
    The paper's TAD ends 0.7-1.4 points below its clean MTT at IPC 10; the absolute targets ask more of this copy."""
    def key(rec: dict) -> tuple[str, object]:
        return run_budget(rec), rec.get("config", {}).get("distill", {}).get("ipc")

    clean: dict[tuple[str, object], tuple[str, dict]] = {}
    for name, rec in finished_clean(results):
        if "partial" in rec or rec.get("note", "").startswith("diverged"):  # a run gone wrong sets no gap
            continue
        if key(rec) not in clean or rec["results"]["test_acc_mean"] > clean[key(rec)][1]["results"]["test_acc_mean"]:
            clean[key(rec)] = (name, rec)
    rows = []
    for path in sorted(results.glob("*.json")):
        rec = json.loads(path.read_text())
        cfg = rec.get("config", {})
        found = cell_of_record(path.stem)
        if (found is None or cfg.get("method", "mtt") != "mtt" or not cfg.get("tad", {}).get("enabled")
                or "test_acc_mean" not in rec.get("results", {}) or key(rec) not in clean):
            continue
        cell = found[0]
        paper, paper_clean = PAPER.get(("mtt", cell.noise, cell.ipc), (None, None))[1], PAPER_CLEAN_MTT[cell.ipc]
        name, ref = clean[key(rec)]
        tad, ref_acc = 100 * rec["results"]["test_acc_mean"], 100 * ref["results"]["test_acc_mean"]
        gap = f"{paper} vs {paper_clean}: {paper - paper_clean:+.1f}" if paper is not None else "unreadable"
        rows.append(f"| [`{path.stem}`]({page_link(results, path.stem)}) | {run_budget(rec)} | {tad:.1f} | "
                    f"[`clean/{name}`]({page_link(results, f'clean/{name}')}) {ref_acc:.1f} | "
                    f"{tad - ref_acc:+.1f} | {gap} |")
    if not rows:
        return []
    return ["", "MTT + TAD against clean-label MTT at the same budget (the gap TAD leaves to training without noise; "
                "the paper's TAD rows sit 0.7-1.4 points below its clean MTT at IPC 10, so on this copy a TAD arm "
                "reaches the paper's numbers only where clean MTT clears them by that much):", "",
            "| run | budget | MTT + TAD | clean MTT | gap | paper: TAD vs clean |",
            "| --- | --- | ---: | ---: | ---: | --- |",
            *rows]


# ---------------------------------------------------------------------- the results page

#: The paper's clean-label MTT on CIFAR-10 per IPC.
PAPER_CLEAN_MTT = {1: 46.3, 10: 65.3, 50: 71.6}


def seed_records(stem: str, results: Path) -> list[dict]:
    """The finished records of a record name over training seeds: ``<stem>.json`` (seed 0) and
    ``<stem>-seed<N>.json``, those that reached their final evaluation."""
    paths = [results / f"{stem}.json"] + sorted(results.glob(f"{stem}-seed*.json"))
    recs = [json.loads(p.read_text()) for p in paths
            if p.is_file() and re.fullmatch(rf"{re.escape(stem)}(-seed\d+)?\.json", p.name)]
    return [r for r in recs if "test_acc_mean" in r.get("results", {})]


@dataclass
class Measured:
    """A cell on the page: its record name, record (None: not run), the final accuracies (%) of its
    finished seeds, and the link to its record's detail page from the results page (None: not run)."""

    stem: str
    record: dict | None
    accs: list[float]
    link: str | None = None

    @property
    def acc(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    def text(self) -> str:
        if self.record is None:
            return "not run"
        if self.acc is None:
            return f"[incomplete]({self.link})" if self.link else "incomplete"
        spread = f" +- {statistics.stdev(self.accs):.1f} ({len(self.accs)} seeds)" if len(self.accs) > 1 else ""
        return f"[{self.acc:.1f}{spread}]({self.link})" if self.link else f"{self.acc:.1f}{spread}"


def measured(cell: str, results: Path) -> Measured:
    stem = record_name(cell, results)
    path = results / f"{stem}.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    return Measured(stem, record, [100 * r["results"]["test_acc_mean"] for r in seed_records(stem, results)],
                    page_link(results, stem) if record is not None else None)


def page_link(results: Path, name: str) -> str:
    """The link from the results page (in ``results``' parent) to the detail page of record ``name``."""
    return detail_path(results, name).relative_to(results.parent).as_posix()


#: A record at the grid's budget: (experts, iterations) of ``--budget short``.
GRID_BUDGET = sizes("short")[0], sizes("short")[2]


def off_budget(*ms: Measured) -> str:
    """`` [<experts> x <epochs>, <iterations> it]`` when a recorded cell ran another budget than the grid's, else
    "" (the epochs are not compared: a buffer trains for what its readers need, and a shorter one holds the
    same first epochs)."""
    texts = []
    for m in ms:
        if m.record is None:
            continue
        cfg = m.record.get("config", {})
        got = (cfg.get("buffer", {}).get("num_experts"), cfg.get("distill", {}).get("iterations"))
        if None not in got and got != GRID_BUDGET and short_budget(m.record) not in texts:
            texts.append(short_budget(m.record))
    return f" [{'; '.join(texts)}]" if texts else ""


def pair_text(noisy: Measured, tad: Measured) -> str:
    """``noisy -> +TAD (gain)`` of two cells, with what is missing said."""
    if noisy.record is None and tad.record is None:
        return "not run"
    gain = f" ({tad.acc - noisy.acc:+.1f})" if noisy.acc is not None and tad.acc is not None else ""
    return f"{noisy.text()} -> {tad.text()}{gain}{off_budget(noisy, tad)}"


def paper_text(method: str, noise: str, ipc: int) -> str:
    """The paper's ``method -> +TAD (gain)`` for a cell; ``?`` for a number its text does not give readably,
    ``*`` after a number read through the text's glyph errors."""
    pair = PAPER.get((method, noise, ipc))
    if pair is None:
        return "-"
    values = [("?" if v is None else f"{v}" + ("*" if (method, noise, ipc, arm) in PAPER_READ_THROUGH_GLYPHS else ""))
              for v, arm in zip(pair, ("noisy", "tad"))]
    noisy, tad = pair
    gain = f" ({tad - noisy:+.1f})" if noisy is not None and tad is not None else ""
    return f"{values[0]} -> {values[1]}{gain}"


def table_lines(results: Path, noises: Sequence[str], methods: Sequence[str]) -> list[str]:
    """Rows ``noise x method`` with our pair beside the paper's at each IPC."""
    lines = ["| noise | method | " + " | ".join(f"IPC {i}: ours | IPC {i}: paper" for i in IPCS) + " |",
             "| --- | --- |" + " --- | --- |" * len(IPCS)]
    for noise in noises:
        for method in methods:
            row = [pair_text(measured(f"{method}-ipc{i}-{noise}-noisy", results),
                             measured(f"{method}-ipc{i}-{noise}-tad", results)) + f" | {paper_text(method, noise, i)}"
                   for i in IPCS]
            lines.append(f"| {noise} | {method.upper()} | " + " | ".join(row) + " |")
    return lines


def two_stage_lines(results: Path) -> list[str]:
    """The two-stage table: per IPC and noise setting, MTT on the noisy labels, the two cleanlab pipelines and MTT
    + TAD, each with its gain over the noisy cell."""
    method, ipcs, noises = TWO_STAGE_CELLS
    arms = ("noisy", *TWO_STAGE_ARMS, "tad")
    lines = ["| IPC | noise | MTT (noisy labels) | (a) cleanlab prune, then MTT | (b) cleanlab relabel, then MTT | "
             "MTT + TAD |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for ipc in ipcs:
        for noise in noises:
            noisy = measured(f"{method}-ipc{ipc}-{noise}-noisy", results)
            row = []
            for arm in arms:
                m = measured(f"{method}-ipc{ipc}-{noise}-{arm}", results)
                gain = (f" ({m.acc - noisy.acc:+.1f})" if arm != "noisy" and m.acc is not None
                        and noisy.acc is not None else "")
                row.append(f"{m.text()}{gain}{off_budget(m)}")
            lines.append(f"| {ipc} | {noise} | " + " | ".join(row) + " |")
    return lines


def ablation_cell(letter: str, noise: str) -> str:
    """The cell of Table 3's configuration ``letter`` under ``noise``."""
    method, ipc, _ = ABLATION_CELLS
    name = f"{method}-ipc{ipc}-{noise}-{letter}"
    return aliases().get(name, name)


def ablation_lines(results: Path) -> list[str]:
    """Table 3: each configuration's switches, our accuracy (and its gain over A) beside the paper's."""
    noises = ABLATION_CELLS[2]
    lines = ["| config | Reg | OL | IL | " + " | ".join(f"{n}: ours | {n}: paper" for n in noises) + " |",
             "| --- | :---: | :---: | :---: |" + " ---: | ---: |" * len(noises)]
    for letter, parts in ABLATION.items():
        row = []
        for noise in noises:
            m, a = measured(ablation_cell(letter, noise), results), measured(ablation_cell("A", noise), results)
            gain = f" ({m.acc - a.acc:+.1f})" if letter != "A" and m.acc is not None and a.acc is not None else ""
            paper, paper_a = PAPER_ABLATION[letter][noise], PAPER_ABLATION["A"][noise]
            paper_gain = f" ({paper - paper_a:+.1f})" if letter != "A" else ""
            row.append(f"{m.text()}{gain}{off_budget(m)} | {paper}{paper_gain}")
        marks = " | ".join("yes" if on else "" for on in parts)
        lines.append(f"| {letter} (`{ablation_cell(letter, noises[-1])}`) | {marks} | " + " | ".join(row) + " |")
    return lines


#: Cell -> an earlier record of the same settings from another machine: the cell's own record repeats that run
#: (the check that a record reproduces from its command).
REPEATS = {"mtt-ipc10-sym40-noisy": "sym40-noisy-e20-i1000", "mtt-ipc10-sym40-tad": "sym40-tad-e20-i1000"}


def repeat_text(results: Path) -> str:
    """Each :data:`REPEATS` cell's final accuracy beside the earlier run's, on their devices, and whether they
    agree within the larger spread of their evaluation nets; "not measured yet" without both records."""
    texts = []
    for cell, earlier in REPEATS.items():
        paths = results / f"{cell}.json", results / f"{earlier}.json"
        if not all(p.is_file() for p in paths):
            continue
        (new, old) = (json.loads(p.read_text()) for p in paths)
        if not all("test_acc_mean" in r.get("results", {}) for r in (new, old)):
            continue
        (a, sa), (b, sb) = ((100 * r["results"]["test_acc_mean"], 100 * r["results"]["test_acc_std"])
                            for r in (new, old))
        agree = "the same within" if abs(a - b) <= max(sa, sb) else "outside"
        texts.append(f"`{cell}` run again from its settings on a fresh {new.get('device')} machine: {a:.2f} +- "
                     f"{sa:.2f} against {b:.2f} +- {sb:.2f} of the first run (`{earlier}`, {old.get('device')}), "
                     f"{agree} the spread of the evaluation nets")
    return "; ".join(texts) or "not measured yet"


def checks_lines(results: Path) -> list[str]:
    """The paper's claims that the grid can check at its budget, each with what the records say so far."""
    def acc(cell: str) -> float | None:
        return measured(cell, results).acc

    def verdict(items: list[tuple[str, bool | None]]) -> str:
        done = [(what, ok) for what, ok in items if ok is not None]
        if not done:
            return "not measured yet"
        failing = [what for what, ok in done if not ok]
        text = f"{len(done) - len(failing)} of {len(done)} measured hold"
        return text + (f" (not: {', '.join(failing)})" if failing else "") + (
            f"; {len(items) - len(done)} not measured yet" if len(done) < len(items) else "")

    def gain(setting: str) -> float | None:
        n, t = acc(f"{setting}-noisy"), acc(f"{setting}-tad")
        return None if n is None or t is None else t - n

    at40 = [(f"mtt-ipc{i}-{n}", gain(f"mtt-ipc{i}-{n}")) for n in ("sym40", "asym40") for i in IPCS]
    big = [(f"mtt-ipc50-{n}", gain(f"mtt-ipc50-{n}")) for n in ("sym40", "asym40")]
    table3 = {letter: acc(ablation_cell(letter, "asym40")) for letter in ABLATION}

    def above(x: str, y: str) -> bool | None:
        a, b = table3[x], table3[y]
        return None if a is None or b is None else a > b

    scores = {letter: a for letter, a in table3.items() if a is not None}
    best = None if len(scores) < len(table3) else max(scores, key=scores.__getitem__) == "F"
    method, ipcs, noises = TWO_STAGE_CELLS
    two_stage = []
    for i in ipcs:
        for n in noises:
            setting = f"{method}-ipc{i}-{n}"
            tad, others = acc(f"{setting}-tad"), [acc(f"{setting}-{arm}") for arm in TWO_STAGE_ARMS]
            two_stage.append((setting, None if tad is None or None in others else all(
                tad >= o for o in others if o is not None)))
    return ["", "The paper's claims, checked at this budget:", "",
            "- MTT + TAD at least as good as MTT at 40% noise, every IPC: "
            + verdict([(s, None if g is None else g >= 0) for s, g in at40]),
            "- MTT at IPC 50: TAD gains at least +6 at sym 40% and asym 40% (the paper: +11.0 and +10.9 at its "
            "budget): " + verdict([(s, None if g is None else g >= 6) for s, g in big]),
            "- Table 3 at asym 40%: F best, C and E each above A, B above A: "
            + verdict([("F best", best), ("C > A", above("C", "A")), ("E > A", above("E", "A")),
                       ("B > A", above("B", "A"))]),
            "- Two-stage baselines: MTT + TAD at least as good as both cleanlab pipelines in every cell (the "
            "paper: TAD above C2D and L2B-DivideMix): " + verdict(two_stage),
            "- A record reproduces from its command on a fresh GPU machine: " + repeat_text(results)]


def page(results: Path) -> str:
    """The results page (Markdown) from the records in ``results``; writes the records' detail pages
    (``<results>/cells/``) and the curves figure (``<results>/curves.png``) on the way."""
    grid = cells()
    lines = ["# Results", "", "## CIFAR-10: the paper's Tables 1-3", "",
             "Generated by `python reproduction/reproduce_cifar10.py --page` from the JSON records in `cifar10/`; "
             "`cifar10/QUEUE.md` lists the cells not run yet with their commands. Each entry: the method on the "
             "noisy labels -> with TAD (the gain), our final accuracy (mean over the evaluation nets at the end of "
             "distillation, clean test set; over several training seeds where a cell has them) beside the paper's. "
             "Each measured number links to its record's page: the run's settings, accuracy curve, trusted space "
             "and trust report, and how it was run (command, commit, device, wall time).", "",
             f"Budget, the same for every cell (`--budget short`): {budget_text('short')}. The paper trains 100 "
             "experts x 50 epochs (DATM: 100) and distils for 5000 or more iterations, so absolute numbers here sit "
             "below its; the gains compare. A cell recorded with other experts or iterations says so in "
             "brackets. Each cell keeps its method's preprocessing: no ZCA for MTT's, FTD's and ATT's IPC-50 "
             "rows, ZCA for the others, so those rows read buffers of their own. Departures from the methods' own "
             "settings: 5 evaluation nets for DATM (its configs: 1); "
             "DATM's IPC-50 start window grows over 2000 iterations, so at 1000 it reaches epoch 30 of 40. "
             "TAD under asymmetric noise adds two remedies the paper's TAD does not have (class-balanced epochs "
             "and a warm-up confidence penalty; `tad_plugin/configs/cifar10_asym.yaml`).", "",
             "Pixels: the JPEG-compressed CIFAR-10 copy (quality 75) for every run recorded here so far "
             "(`--dataset /root/cifar10.npz`): absolute numbers differ a little from the official pixels; arms "
             "on the same copy compare fairly. Paper numbers marked `*` were read through the paper text's glyph "
             "errors; `?` is a number its text does not give readably.", "",
             "### Table 1: symmetric and asymmetric noise", "",
             *table_lines(results, ("sym20", "sym40", "asym20", "asym40"), METHODS), "",
             "### Table 2: CIFAR-10N (worst)", "",
             *table_lines(results, ("c10n-worst",), C10N_METHODS), "",
             "### Table 3: TAD's parts on DATM, IPC 50", "",
             "Reg: the reverse-CE term of the experts' loss (`tad.reg_weight`, 0 = plain CE); OL: the outer loop, "
             "the division into trusted and untrusted samples and training on the trusted space "
             "(`tad.outer_loop`); IL: the inner loop, recalibrating the untrusted samples' labels "
             "(`tad.inner_loop`, which needs OL). A is DATM on the noisy labels (the `noisy` cell), F every part "
             "on (the `tad` cell). In brackets: the gain over A.", "",
             *ablation_lines(results), "",
             "### Two-stage baselines: clean the labels, then distil", "",
             "The paper's Table 4 protocol (there on CIFAR-100, whose images are not available here), on CIFAR-10: "
             "confident learning (cleanlab, 5-fold out-of-sample probabilities of the ConvNet trained with MTT's "
             "expert recipe for 23 epochs) flags the labels it finds wrong; (a) MTT then distils from the samples it "
             "keeps, (b) from every sample with its suggested labels. In brackets: the gain over MTT on the noisy "
             "labels.", "",
             *two_stage_lines(results)]
    lines += checks_lines(results)
    beyond: dict[str, list[str]] = {}
    for name, cell in grid.items():
        extra = beyond_paper(measured(name, results).record) if cell.tad else []
        if extra:
            beyond.setdefault(", ".join(extra), []).append(name)
    if beyond:
        lines += ["", "TAD arms run with settings the paper's TAD does not have: " + "; ".join(
            f"{extra} ({', '.join(f'`{n}`' for n in names)})" for extra, names in beyond.items())
            + "."]
    clean = best_clean(results)
    if clean is not None:
        name, rec = clean
        lines += ["", f"Clean-label reference (MTT without noise, IPC 10, its best run here; the paper's MTT: "
                      f"{PAPER_CLEAN_MTT[10]} on the official pixels): "
                      f"[`clean/{name}`]({page_link(results, f'clean/{name}')}) "
                      f"{acc_text(rec)}; {budget(rec)}."]
    lines += clean_gap_lines(results)
    about, others = record_places(results)
    write_detail_pages(results, about, results.parent / "README.md")
    lines += curves_lines(results)
    if others:
        lines += ["", "## Other runs", "",
                  "Variants of the cells above (other settings, seeds, budgets) and runs outside the grid, each "
                  "with what it changes against the cell's record and its final accuracy:", "", *others]
    lines += ["", "CIFAR-100: its images are not available where these runs were made; that code path is tested on "
              "generated data of the right shapes only. Tiny ImageNet: the data path is checked on the real "
              "images (200 classes in wnid order, 500 training images each, validation labels from their "
              "annotation file); no Tiny ImageNet cell is measured yet.", ""]
    if (results / "audit" / "detection.md").is_file():
        lines += ["## Label audit", "",
                  "[`cifar10/audit/detection.md`](cifar10/audit/detection.md): `tad audit` against cleanlab on the "
                  "label sets run with `--audit` (precision, recall and F1 of the flagged samples against the clean "
                  "labels, accuracy of the suggested labels, time of each detector).", ""]
    lines += ["## Other results", ""]
    lines += [f"- [`{name}`]({name}): {what}" for name, what in OTHER_RESULTS]
    return "\n".join(lines) + "\n"


def cell_words(cell: Cell) -> str:
    """Where a cell stands in the paper's tables, in words: ``Table 1: MTT at IPC 10, sym40, with TAD``."""
    if cell.arm in ABLATION:
        return f"Table 3: configuration {cell.arm} (DATM at IPC {cell.ipc}, {cell.noise})"
    if cell.arm in TWO_STAGE_ARMS:
        return (f"two-stage baseline: cleanlab {'prunes' if cell.arm == 'prune' else 'relabels'} the flagged "
                f"samples, then {cell.method.upper()} at IPC {cell.ipc}, {cell.noise}")
    table = "Table 2" if cell.noise == "c10n-worst" else "Table 1"
    return f"{table}: {cell.method.upper()} at IPC {cell.ipc}, {cell.noise}, {'with' if cell.tad else 'without'} TAD"


#: the most settings an index line names of what a run changes (the detail page has them all)
VARIES_SHOWN = 4


def record_places(results: Path) -> tuple[dict[str, str], list[str]]:
    """Each record's place in one line, for its detail page's header (record name -> text; a cell's record:
    its table and cell, a variant: the cell it varies), and the index lines of the records that are not a cell's
    own (name linked to its page, what it changes against the cell's record, its final accuracy)."""
    grid = cells()
    own = {measured(name, results).stem: cell for name, cell in grid.items() if measured(name, results).record}
    about: dict[str, str] = {stem: cell_words(cell) for stem, cell in own.items()}
    lines = []
    for name, path in record_paths(results).items():
        if name in own:
            continue
        rec = json.loads(path.read_text())
        found = cell_of_record(name)
        if name.startswith("clean/"):
            what, where = "MTT on the clean labels", "a clean-label reference run"
        elif found is not None:
            cell = found[0]
            ref_stem = record_name(cell.name, results)
            ref_path = results / f"{ref_stem}.json"
            what = f"{cell.method.upper()} at IPC {cell.ipc}, {cell.noise}, {'with' if cell.tad else 'without'} TAD"
            where = f"a variant of {cell_words(cell)}"
            if ref_path.is_file():
                assumed = {f"{sec}.{k}": v for sec, keys in PAPER_TAD.items() for k, v in keys.items()}
                diffs = varies(rec, json.loads(ref_path.read_text()), assumed)
                shown = (", ".join(f"`{d}`" for d in diffs[:VARIES_SHOWN])
                         + (", ..." if len(diffs) > VARIES_SHOWN else ""))
                what += f"; against [`{ref_stem}`]({page_link(results, ref_stem)}): " + (
                    shown if diffs else "no difference in the settings both records hold")
                where += f" (against [`{ref_stem}`]({ref_stem}.md))"
        else:
            what = where = "a run outside the grid"
        if rec.get("partial"):
            what += "; stopped early"
        about[name] = where
        lines.append(f"- [`{name}`]({page_link(results, name)}): {what}; {short_budget(rec)}: {acc_text(rec)}")
    return about, lines


def curves_lines(results: Path) -> list[str]:
    """The page's section on the distillation curves: every record's curve in one figure, a panel per setting
    (each record's page has its own curve and the numbers)."""
    runs = {name: json.loads(path.read_text()) for name, path in record_paths(results).items()}
    order = [*dict.fromkeys(c.setting for c in cells().values()), "clean", "other"]
    if not plot_curves(runs, results / "curves.png", curve_panel, order):
        return []
    return ["", "## Distillation curves", "",
            "Test accuracy of the evaluation nets at every evaluation point (mean +- std %) of every record, a panel "
            "per setting; `clean` holds MTT on the clean labels.", "", f"![curves]({results.name}/curves.png)"]


def curve_panel(name: str) -> str:
    """The panel of the curves plot a record belongs to: ``clean`` for ``clean/...``, else the setting of its cell
    (``<method>-ipc<N>-<noise>``, :func:`cell_of_record`), else ``other``."""
    if name.startswith("clean/"):
        return "clean"
    found = cell_of_record(name)
    return found[0].setting if found else "other"


def grid_records(results: str | Path) -> Path:
    """Where the grid's records are under the results folder ``results`` (``--results``): ``<results>/cifar10``."""
    return Path(results) / "cifar10"


def add_options(p: argparse.ArgumentParser) -> None:
    """The runner's options on ``p`` (the script's parser and ``tad reproduce``)."""
    p.add_argument("--list", action="store_true", help="print every cell and buffer with its command")
    p.add_argument("--cell", action="append", metavar="CELL",
                   help="run this cell (repeatable): a name (see --list), a shell pattern ('mtt-ipc50-*') or 'all' "
                        "(the c10n-worst cells need --cifar-n)")
    p.add_argument("--jobs", type=int, default=1, help="jobs run at once on each GPU")
    p.add_argument("--gpus", help="comma-separated CUDA device indices to spread the jobs over (default: all)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="the results folder: records in DIR/cifar10/, the page DIR/README.md (default: ./results)")
    p.add_argument("--page", action="store_true", help="write RESULTS/README.md")
    p.add_argument("--queue", action="store_true", help="write RESULTS/cifar10/QUEUE.md: the cells "
                   "without a finished record, in batches, with their commands")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (torchvision), or an arrays file .npz")
    p.add_argument("--cifar-n", help="CIFAR-10_human.pt for the c10n-worst cells")
    p.add_argument("--out", default="runs/cifar10", help="run folders (one per cell, shared buffers in buffers/)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="short",
                   help="short: the grid's budget (20 experts, 1000 iterations, an evaluation every 500 with 5 "
                        "nets); long: 100 experts, 5000 iterations; full: each method's own (hours per cell); "
                        "--set overrides any")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0], metavar="0,1,2",
                   help="training seeds (the labels keep data.noise_seed): seed 0 is the cell's own run and record, "
                        "seed N runs as <cell>-seedN (--set seed=N) from its own buffer; the page averages a "
                        "cell's seeds")
    p.add_argument("--tag", help="a variant's name: runs go to OUT/<cell>-<tag> (buffers to "
                   "OUT/buffers/<buffer>-<tag>) and records to RESULTS/cifar10/<cell>-<tag>.json, so a run with "
                   "other --set values never replaces a cell's record")
    p.add_argument("--audit", action="store_true",
                   help="also run the label-audit detection table's rows for the label set of each TAD buffer of "
                        "MTT's expert recipe with ZCA: tad audit with that buffer's experts, with 5 experts of its "
                        "own and with cleanlab; records in RESULTS/cifar10/audit/, the table in "
                        "RESULTS/cifar10/audit/detection.md")
    p.add_argument("--features-budget", type=float, default=FEATURES_BUDGET_S, metavar="SECONDS",
                   help="when a TAD buffer needs the default SimCLR extractor and it does not exist yet, train it "
                        "first for this long (default: the recorded 10-minute recipe)")


NOTHING_ASKED = "give --list, --cell CELL, --queue or --page"


def asked(args: argparse.Namespace) -> bool:
    """Whether the options ``args`` ask the runner for anything (:data:`NOTHING_ASKED` says what it can do)."""
    return bool(args.list or args.cell or args.page or args.queue)


def run(args: argparse.Namespace) -> int:
    """Do what the parsed options ``args`` (:func:`add_options`) ask; the exit code: 0, or 1 if a job failed.
    Raises ValueError when they ask for nothing."""
    from tad_plugin.files import atomic_write

    records = grid_records(args.results)
    if not asked(args):
        raise ValueError(NOTHING_ASKED)
    if args.list:
        out, cifar_n = Path(args.out), args.cifar_n or "CIFAR-10_human.pt"
        for cell in cells():
            cmd = command(cell, args.dataset, out, cifar_n, args.budget, args.set, args.tag)
            print(f"{cell}: {' '.join(cmd)}{recorded_time(cell, records)}")
        for alias, cell in aliases().items():
            print(f"{alias}: the cell {cell}")
        for buf in dict.fromkeys(buffer_of(c) for c in cells().values()):
            print(f"buffer {buf}: {' '.join(buffer_command(buf, args.dataset, out, cifar_n, args.budget, args.set))}")
    code = run_cells(args) if args.cell else 0
    if args.queue:
        text = queue(records, budget=args.budget)
        atomic_write(records / "QUEUE.md", lambda f: f.write(text.encode()))
        print(text)
    if args.page:
        text = page(records)
        atomic_write(Path(args.results) / "README.md", lambda f: f.write(text.encode()))
        print(text)
    return code


def add_subcommand(sub: Any) -> None:
    """Register ``tad reproduce`` (this runner, results under ``--results``, default ./results) on the ``tad``
    parser's sub-parsers (its handler as ``func``)."""
    p = sub.add_parser("reproduce", help="the paper's CIFAR-10 grid: run cells, write the queue and results page",
                       description=__doc__.split("\n\n")[0])
    add_options(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None, results: str | Path | None = None) -> None:
    """The runner's command line (``argv``, default ``sys.argv[1:]``); exits with :func:`run`'s code.
    ``results``: the default of ``--results`` (None: ./results)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    if results is not None:
        p.set_defaults(results=str(results))
    args = p.parse_args(argv)
    if not asked(args):
        p.error(NOTHING_ASKED)
    sys.exit(run(args))
