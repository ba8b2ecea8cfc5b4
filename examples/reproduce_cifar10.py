"""Reproduce the paper's CIFAR-10 IPC 10 comparisons (method vs method + TAD for MTT, FTD, DATM and
ATT), one command per cell.

    python examples/reproduce_cifar10.py --list                              # the cells and their commands
    python examples/reproduce_cifar10.py --cell sym40-tad --dataset /data/cifar10.npz
    python examples/reproduce_cifar10.py --cell att-c10n-worst-noisy --dataset /data/cifar10.npz \\
        --cifar-n /data/CIFAR-10_human.pt
    python examples/reproduce_cifar10.py --cell sym40-noisy --cell sym40-tad --jobs 2 --dataset /data/cifar10.npz
    python examples/reproduce_cifar10.py --cell att-sym40-noisy --cell att-sym40-tad --budget short \\
        --dataset /data/cifar10.npz                                          # the page's budget: minutes a cell
    python examples/reproduce_cifar10.py --cell sym40-tad --budget short --set tad.balance_classes=true \\
        --tag balanced --dataset /data/cifar10.npz                           # a variant: its own run and record
    python examples/reproduce_cifar10.py --cell sym40-noisy --cell sym40-tad --budget long --tag long \\
        --dataset /data/cifar10.npz --gpus 0,1                               # the paper's experts and iterations
    python examples/reproduce_cifar10.py --cell asym40-noisy --cell asym40-tad --budget short --seeds 1,2 \\
        --dataset /data/cifar10.npz --gpus 0,1,2,3                           # more training seeds of a pair
    python examples/reproduce_cifar10.py --cell all --budget short --dataset /data/cifar10.npz \\
        --cifar-n /data/CIFAR-10_human.pt --gpus 0                           # the whole table, one GPU
    python examples/reproduce_cifar10.py --page                              # results page from the JSONs

Each cell runs ``tad run`` with a config from ``examples/configs/`` (its ``method:`` picks the distiller;
both arms of a setting, ``noisy`` and ``tad``, share every setting but ``tad.enabled``, and their
seeds), then copies the run's result JSON (command, config, seed, commit, device, wall time,
accuracies) to ``examples/results/cifar10/<cell>.json``. ``--page`` turns those files into
``examples/results/README.md`` (the results page: this table with the paper's numbers beside ours, and
an index of every other committed result). The TAD
arms need the SimCLR extractor: when it is missing from its default place (``tad features train``'s) and no
``--set tad.features=...`` names another, the script trains it first (``--features-budget``, 590 s). Runs
resume: re-running a cell skips its finished stages.
Several ``--cell``: they run as separate processes, ``--jobs`` at once on each GPU of ``--gpus``,
logs in ``<out>/logs/<cell>.log``; a failed cell does not stop the others (the exit code is 1 and its
log's last lines are printed). ATT's cells distil from the experts of the MTT cell of the same noise and
arm (ATT trains MTT's expert recipe, apart from its buffer script's batch 512 against MTT's 256), and FTD's
from the DATM cell's (both train GSAM experts, rho 0.01, alpha 0.3; DATM's for 100 epochs, FTD's for 50, of
which FTD matches epochs 0-22 only), when that cell runs in the same invocation (they start once its buffer
stage is done) or has run into the same ``--out``; ``--no-reuse-buffers`` trains their own, and the page
says which buffer each cell used.

Pixels: if you use the JPEG-compressed CIFAR-10 copy, absolute accuracies differ a little from the
paper's official pixels; the comparison between arms on the same copy stays valid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "cifar10"
PAGE = ROOT / "results" / "README.md"

#: The other committed results, for the page's index: (file under examples/results/, what it holds).
OTHER_RESULTS = (
    ("demo_digits.md", "`tad demo` on digits (CPU): noisy MTT vs MTT + TAD, trust report, ablations"),
    ("demo_digits_asym40.json", "`tad demo` on digits with CIFAR-10's asymmetric flips at 40% (CPU): both arms, trust report"),
    ("demo_digits_asym40_balanced.json", "the same with `tad.balance_classes` (CPU): both arms, trust report"),
    ("features_cifar10.md", "SimCLR ResNet-18 extractor on CIFAR-10: kNN accuracy vs epochs and minutes"),
    ("benchmark_engine.md", "engine speed vs the official MTT code (experts, distillation, evaluation)"),
    ("benchmark_experts.json", "expert-training variants (fp32 / bf16 / channels_last, E, TAD) per expert-epoch"),
    ("benchmark_inner_grad_cpu.json", "distillation routes (autograd / explicit / compiled, recompute): time, memory (CPU)"),
    ("benchmark_inner_grad_h200_ipc10.json", "the same routes on an H200, IPC 10 (30 unrolled steps, batch 100)"),
    ("benchmark_inner_grad_h200_ipc50.json", "the same routes on an H200, IPC 50 (batch 500): peak memory"),
    ("features_probe/features_cifar10_lr024.md", "SimCLR probe: peak lr 0.24 (2x the default) for 10 minutes on an H200"),
    ("features_probe/features_cifar10_lr006.md", "SimCLR probe: peak lr 0.06 (half the default) for 10 minutes on an H100"),
    ("benchmark_engine_routes_h100.json", "every engine route of the CIFAR-10 configs from one H100 run, with official and floor ratios"),
    ("features_cifar10_throughput.json", "SimCLR training throughput (batch, compile) and augmentation share"),
    ("benchmark_augment_cpu.json", "SimCLR augmentation alone, eager vs compiled pixel operations (CPU)"),
    ("benchmark_distributed.json", "1 vs 2 GPUs under torchrun: expert training, IPC 50 x 100 distillation"),
    ("benchmark_dual_loop.md", "TAD's per-epoch division + recalibration at CIFAR-10 scale: before / after the speed-up "
     "(CPU), and on an H200"),
    ("benchmark_experts_h200.json", "expert-epoch on an H200, bf16 (test pass too) vs fp32, compiled, E = 20"),
    ("benchmark_experts_h200_e40.json", "expert-epoch on an H200, E = 20 vs 40 experts per launch, and without DSA"),
    ("benchmark_experts_h100_split.json", "expert-epoch on an H100 with the test pass timed apart: the official comparison train + test and train only"),
    ("benchmark_experts_h100.json", "expert-epoch on an H100, bf16 (test pass too) vs fp32, compiled, E = 20"),
    ("benchmark_inner_grad_h100_ipc10.json", "distillation routes on an H100, IPC 10: autograd vs compiled + recompute"),
    ("benchmark_inner_grad_h100_ipc10_profile.json", "the same on another H100, profiled: kernel time vs wall time, top kernels"),
    ("benchmark_augment_h100.json", "SimCLR augmentation alone on an H100, eager vs compiled pixel operations"),
    ("features_cifar10_throughput_h100_2026-11-26.json", "SimCLR training throughput on an H100 with the compiled augmentation"),
    ("features_cifar10_throughput_h100_jitter_order.json", "the same after the per-sample colour-jitter order (more "
     "pixel work: augmentation 3.9% -> 10.5% of a compiled batch-512 step)"),
    ("features_cifar10_throughput_h100_fused_render.json", "the same with the whole view rendered as one compiled graph "
     "(augmentation 6.0% of a compiled batch-512 step)"),
    ("benchmark_augment_cpu_fused_render.json", "SimCLR augmentation alone before / after the one-graph render (CPU)"),
    ("features_probe/features_cifar10_fixes.md", "SimCLR 10 minutes on an H100 with the audit's two fixes (per-sample "
     "jitter order, fixed warm-up): 79.87% kNN@10, 286 epochs"),
    ("features_probe/features_cifar10_fused.md", "the same with the one-graph render: 345 epochs, 79.57% kNN@10"),
    ("features_probe/features_cifar10_t02.md", "SimCLR probe: temperature 0.2 (default 0.5) for 10 minutes on an H200: "
     "374 epochs, 78.18% kNN@10"),
    ("features_probe/features_cifar10_crop008.md", "SimCLR 10 minutes on an H100 with crop scale (0.08, 1), now the "
     "default: 345 epochs, 80.31% kNN@10 (issue 4's target)"),
    ("features_probe/features_cifar10_s14.md", "SimCLR 5.5 minutes on an H100 (the extractor of sym40-tad-avg1/-avg6): "
     "199 epochs, 78.91% kNN@10"),
    ("features_probe/features_cifar10_s15.md", "SimCLR 5.5 minutes on an H100 again (the extractor of att-sym40-tad and "
     "division/sym40-tad-rce3): 175 epochs, 78.63% kNN@10"),
    ("features_probe/ten_minute_runs.png", "the eight 10-minute SimCLR runs' kNN curves on one plot"),
    ("recalibration_sweep.md", "the inner loop's vote settings on digits and on SimCLR CIFAR-10 features (CPU)"),
    ("cifar10/division/README.md", "the final division under three threshold rules (Eq. 5's class mean, global 0.5, "
     "min of both), per class, on CIFAR-10 sym40 (SGD and GSAM experts) and asym40; losses averaged over the last K "
     "epochs (tad.loss_average), offline and trained with; a stronger reverse-CE term (tad.reg_weight=3)"),
    ("expert_displacement.md", "how far experts move per 2 epochs: noisy vs TAD with and without reverse CE "
     "(digits, CPU) and noisy vs TAD GSAM experts (CIFAR-10 sym40), beside the learned step size"),
    ("cifar10/first_gpu_runs/README.md", "first CIFAR-10 GPU runs: a pipeline check (no ZCA), not results"),
    ("../upstream/README.md", "`tad wrap` on the real MTT / FTD / DATM / ATT code"),
)

#: setting -> (config file, paper method, paper method + TAD, our target for method + TAD, min gain over
#: our noisy method); MTT's settings carry no method prefix.
SETTINGS = {
    "sym40": ("cifar10_sym40_ipc10.yaml", 57.5, 64.6, 63.0, 5.0),
    "asym40": ("cifar10_asym40_ipc10.yaml", 54.4, 63.9, 62.0, 6.0),
    "c10n-worst": ("cifar10n_worst_ipc10.yaml", 55.7, 64.4, 62.0, 5.0),
    "ftd-sym40": ("ftd_cifar10_sym40_ipc10.yaml", 56.2, 65.4, 63.0, 5.0),
    "datm-sym40": ("datm_cifar10_sym40_ipc10.yaml", 58.2, 65.5, 63.0, 4.0),
    "att-sym40": ("att_cifar10_sym40_ipc10.yaml", 58.1, 66.2, 63.0, 5.0),
    "att-c10n-worst": ("att_cifar10n_worst_ipc10.yaml", 58.3, 65.7, 63.0, 5.0),
}
ARMS = {"noisy": "--no-tad", "tad": "--tad"}
#: --budget -> config overrides put before the user's --set (which win). "full": each method's own budget
#: (100 experts x 50 epochs for MTT; ATT's README runs 60000 iterations): hours per cell. "short": the budget
#: of the recorded pairs on the page (20 experts x 23 epochs, enough for IPC 10's start epochs <= 20 plus 2
#: matched epochs; 1000 iterations, an evaluation every 250): the recorded MTT cells took 6.5-8.3 min each
#: on an H200, the ATT cells 3.5 min of distillation on an H100 (``--list`` shows each record's time).
#: "long": the paper's 100 experts and 5000 iterations with the experts trained only as far as IPC 10's matching
#: reads (23 epochs; epochs 23-49 of MTT's 50 are never used), an evaluation every 500: issue 3's clean run and
#: its sym40 noisy baseline (clean/mtt-clean-e100-i5000, sym40-noisy-e100-i5000) ran it: experts 7.3 min on two
#: H200s under torchrun (so ~15 min on the one GPU a cell gets here), distillation 13.8 min: ~28 min per MTT cell.
BUDGETS = {
    "full": (),
    "long": ("buffer.num_experts=100", "buffer.epochs=23", "buffer.experts_per_group=25", "distill.iterations=5000",
             "distill.eval_every=500"),
    "short": ("buffer.num_experts=20", "buffer.epochs=23", "buffer.experts_per_group=20", "distill.iterations=1000",
              "distill.eval_every=250"),
}
#: setting -> the setting whose experts it reuses (same noise, same arm): ATT trains MTT's plain-SGD experts
#: (its buffer script only defaults to batch 512 where MTT's uses 256), and FTD DATM's GSAM experts (DATM's
#: run for 100 epochs, FTD's for 50; FTD's matching reads epochs up to max_start_epoch + expert_epochs = 22),
#: so those cells distil from the other cell's buffer when it runs in the same invocation or has run into
#: the same ``--out``.
REUSE = {"att-sym40": "sym40", "att-c10n-worst": "c10n-worst", "ftd-sym40": "datm-sym40"}


def reuse_source(cell: str) -> str | None:
    """The cell whose buffer ``cell`` reuses, or None."""
    setting, arm = cells()[cell]
    return f"{REUSE[setting]}-{arm}" if setting in REUSE else None


def buffer_done(out: Path, cell: str) -> bool:
    """Whether ``cell``'s run in ``out`` has finished its buffer stage (its record lists the stage)."""
    try:
        return "buffer" in json.loads((out / cell / "result_run.json").read_text()).get("stages", {})
    except (OSError, ValueError):
        return False


def cells() -> dict[str, tuple[str, str]]:
    return {f"{s}-{a}": (s, a) for s in SETTINGS for a in ARMS}


def run_name(cell: str, tag: str | None) -> str:
    """The run folder and record name of ``cell`` under ``--tag``: ``<cell>-<tag>``, or the cell itself."""
    return f"{cell}-{tag}" if tag else cell


def seed_tag(tag: str | None, seed: int) -> str | None:
    """The tag of a run with training seed ``seed`` (``--seeds``): seed 0, the configs' own, keeps ``tag`` (the
    cell's or variant's record); another seed adds ``seed<N>`` (``sym40-tad-seed1``, ``sym40-tad-bal-seed1``)."""
    if seed == 0:
        return tag
    return f"{tag}-seed{seed}" if tag else f"seed{seed}"


def seed_records(cell: str, results: Path = RESULTS) -> list[dict]:
    """The finished records of ``cell`` over training seeds: ``<cell>.json`` (seed 0) and ``<cell>-seed<N>.json``,
    those that reached their final evaluation."""
    paths = [results / f"{cell}.json"] + sorted(results.glob(f"{cell}-seed*.json"))
    recs = [json.loads(p.read_text()) for p in paths
            if p.is_file() and re.fullmatch(rf"{re.escape(cell)}(-seed\d+)?\.json", p.name)]
    return [r for r in recs if "test_acc_mean" in r.get("results", {})]


def command(cell: str, dataset: str, out: Path, cifar_n: str | None, extra: list[str],
            reuse: str | None = None, tag: str | None = None) -> list[str]:
    """``cell``'s ``tad run`` command into ``out/<run_name>``; ``reuse`` = the cell whose buffer (under ``out``,
    with the same ``tag``) it distils from."""
    setting, arm = cells()[cell]
    cmd = [sys.executable, "-m", "tad_plugin.cli", "run", "--config", str(ROOT / "configs" / SETTINGS[setting][0]),
           ARMS[arm], "--dataset", dataset, "--out", str(out / run_name(cell, tag))]
    if reuse is not None:
        cmd += ["--buffer", str(out / run_name(reuse, tag) / "buffer")]
    if setting.endswith("c10n-worst"):
        if not cifar_n:
            raise SystemExit("the c10n-worst cells need --cifar-n PATH (the official CIFAR-10_human.pt)")
        cmd += ["--cifar-n", cifar_n]
    return cmd + extra


def gpu_ids(spec: str | None) -> list[str]:
    """The CUDA device indices to spread cells over: ``spec`` ("0,1"), else every visible GPU, else none."""
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


def run_parallel(jobs: dict[str, list[str]], logs: Path, slots: int, gpus: list[str],
                 on_done: Callable[[str], None] | None = None, poll_s: float = 2.0,
                 ready: dict[str, Callable[[], bool]] | None = None) -> dict[str, int]:
    """Run the commands of ``jobs`` (name -> argv), at most ``slots`` at once per GPU; returns name -> exit code.

    ``ready[name]()`` (if given) must be true before job ``name`` starts; jobs that are ready start in
    their order. When nothing runs and no pending job is ready, the first pending one starts anyway (its
    predicate waits on something that will not come; the job itself then says what is missing).

    Each job gets ``CUDA_VISIBLE_DEVICES`` set to the GPU with the fewest running jobs (left unset when
    ``gpus`` is empty: one CPU queue of ``slots``), writes stdout and stderr to ``logs/<name>.log``, and
    is announced when it starts and ends. ``on_done(name)`` runs after each job that exits with 0 (if it
    raises, the job counts as failed with code 1). A job that fails does not stop the others; the caller
    decides what a non-zero code means.
    """
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    logs.mkdir(parents=True, exist_ok=True)
    queues = gpus or [None]
    pending, running, codes = list(jobs), {}, {}
    start = time.monotonic()
    while pending or running:
        for name, (proc, gpu, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            codes[name] = proc.returncode
            where = f" on GPU {gpu}" if gpu is not None else ""
            print(f"[{time.monotonic() - start:7.0f} s] {name}{where}: exit {proc.returncode} "
                  f"(log {logs / (name + '.log')})", flush=True)
            if proc.returncode == 0 and on_done is not None:
                try:
                    on_done(name)
                except Exception as exc:  # e.g. no result file: report it, keep the other jobs going
                    codes[name] = 1
                    print(f"{name}: finished, but collecting its result failed: {exc}", flush=True)
        load = {g: sum(1 for _, q, _ in running.values() if q == g) for g in queues}
        while pending and min(load.values()) < slots:
            startable = [n for n in pending if ready is None or n not in ready or ready[n]()]
            if not startable and running:
                break
            gpu = min(queues, key=lambda g: load[g])
            name = (startable or pending)[0]
            pending.remove(name)
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = open(logs / f"{name}.log", "w")
            running[name] = (subprocess.Popen(jobs[name], stdout=log, stderr=subprocess.STDOUT, env=env), gpu, log)
            load[gpu] += 1
            print(f"[{time.monotonic() - start:7.0f} s] {name} started" + (f" on GPU {gpu}" if gpu is not None else "")
                  + f": {' '.join(jobs[name])}", flush=True)
        if running:
            time.sleep(poll_s)
    return codes


def collect(name: str, out: Path) -> None:
    """Copy a finished run's result JSON (``out/<name>/result_run.json``) to examples/results/cifar10/<name>.json,
    atomically (a temporary file, then a rename)."""
    from tad_plugin.files import atomic_write

    RESULTS.mkdir(parents=True, exist_ok=True)
    data = (out / name / "result_run.json").read_bytes()
    atomic_write(RESULTS / f"{name}.json", lambda f: f.write(data))
    print(f"result: {RESULTS / (name + '.json')}", flush=True)


def recorded_time(cell: str, results: Path = RESULTS) -> str:
    """`` (recorded: <minutes> min on <device>, <budget>)`` from the cell's committed record, or "" without one:
    what a run of the same budget costs."""
    path = results / f"{cell}.json"
    if not path.is_file():
        return ""
    rec = json.loads(path.read_text())
    if "wall_time_s" not in rec:
        return ""
    reused = " (experts reused from another run: distillation only)" if rec.get("stages", {}).get("buffer", {}).get(
        "reused") else ""
    return (f"  (recorded: {rec['wall_time_s'] / 60:.1f} min on {rec.get('device', '?')}{reused}, "
            f"{run_budget(rec)})")


def overrides(budget: str, sets: list[str]) -> list[str]:
    """The ``--set`` arguments of every cell: the budget's, then the user's (later ones win)."""
    return [x for s in (*BUDGETS[budget], *sets) for x in ("--set", s)]


#: Seconds of SimCLR training when a TAD cell needs the default extractor and it does not exist yet: the
#: recorded 10-minute recipe (80.31% kNN@10 on an H100, results/features_probe/features_cifar10_crop008.md).
FEATURES_BUDGET_S = 590.0


def extractor_to_train(cell_names: Sequence[str], dataset: str, sets: Sequence[str]) -> Path | None:
    """The extractor file that must be trained before ``cell_names`` run: the default one of ``dataset`` (where
    ``tad features train`` writes it and ``tad run`` looks for it) when a TAD arm is among the cells, no
    ``--set tad.features=`` names another, and the file is missing; None otherwise.

    Raises:
        SystemExit: ``--set tad.features=PATH`` names a file that does not exist (a typo is not worth ten
            minutes of training; the message gives the command that would make it).
    """
    if not any(cells()[cell][1] == "tad" for cell in cell_names):
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


def train_missing_extractor(args: argparse.Namespace) -> int:
    """Train the SimCLR extractor the requested TAD arms need when it is missing (:func:`extractor_to_train`),
    for ``args.features_budget`` seconds on the first GPU of ``--gpus``; 0 if there was nothing to do or it
    finished. ``tad features train`` keeps a resumable state beside the file: an interrupted run resumes."""
    from tad_plugin.features.train import state_path_for

    path = extractor_to_train(args.cell, args.dataset, args.set)
    if path is None:
        return 0
    state = state_path_for(path)
    cmd = [sys.executable, "-m", "tad_plugin.cli", "features", "train", "--dataset", args.dataset, "--out", str(path),
           "--time-budget", str(args.features_budget), "--epochs", "1000", "--eval-every", "50"]
    cmd += ["--resume"] if state.is_file() else []
    env = first_gpu_env(args.gpus)
    print(f"the TAD arms embed with the SimCLR extractor {path}, which does not exist yet: training it for "
          f"{args.features_budget:.0f} s first\n" + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        print(f"FAILED: the extractor (exit {code}); no cell ran", file=sys.stderr)
    return code


def run_cells(args: argparse.Namespace) -> int:
    """Run the ``--cell`` cells (one in the foreground, several through :func:`run_parallel`); 0 if all passed."""
    out, tag = Path(args.out), args.tag
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", tag):
        raise SystemExit(f"--tag {tag!r}: use letters, digits, '_' and '.' only (it becomes part of file names)")
    if any(seed < 0 for seed in args.seeds):
        raise SystemExit(f"--seeds {args.seeds}: seeds are >= 0")
    cmds: dict[str, list[str]] = {}
    ready: dict[str, Callable[[], bool]] = {}
    for seed in dict.fromkeys(args.seeds):
        t = seed_tag(tag, seed)
        extra = overrides(args.budget, args.set) + (["--set", f"seed={seed}"] if seed else [])
        requested = list(dict.fromkeys(args.cell))
        reuse = {}  # cell -> the cell whose buffer it distils from (same seed)
        for cell in requested:
            src = reuse_source(cell) if args.reuse_buffers else None
            if src is not None and (src in requested or buffer_done(out, run_name(src, t))):
                reuse[cell] = src
        # a cell that reuses another's buffer goes after it, so a single queue never waits on a later job
        requested.sort(key=lambda c: c in reuse)
        name = {cell: run_name(cell, t) for cell in {*requested, *reuse.values()}}
        cmds.update({name[cell]: command(cell, args.dataset, out, args.cifar_n, extra, reuse.get(cell), t)
                     for cell in requested})
        for cell, src in reuse.items():
            print(f"{name[cell]} distils from the experts of {name[src]} ({out / name[src] / 'buffer'})", flush=True)
        ready.update({name[cell]: (lambda s=name[src]: buffer_done(out, s)) for cell, src in reuse.items()})
    if len(cmds) == 1 and args.jobs == 1:  # in the foreground, on the first GPU of --gpus (if given)
        (cell, cmd), = cmds.items()
        env = first_gpu_env(args.gpus)
        print(" ".join(cmd) + (f"  (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if args.gpus else ""),
              flush=True)
        code = subprocess.run(cmd, env=env).returncode
        if code != 0:
            print(f"FAILED {cell} (exit {code}): its output is above", file=sys.stderr)
            return 1
        collect(cell, out)
        return 0
    codes = run_parallel(cmds, out / "logs", args.jobs, gpu_ids(args.gpus), on_done=lambda c: collect(c, out),
                         ready=ready)
    failed = sorted(c for c, rc in codes.items() if rc != 0)
    for cell in failed:
        print(f"FAILED {cell} (exit {codes[cell]}); last lines of {out / 'logs' / (cell + '.log')}:", file=sys.stderr)
        lines = (out / "logs" / f"{cell}.log").read_text(errors="replace").replace("\r", "\n").splitlines()
        print("\n".join("    " + line for line in lines[-12:]), file=sys.stderr)
    return 1 if failed else 0


def evaluations(record: dict) -> list[tuple[int, float, float]]:
    """(iteration, mean %, std %) of every evaluation in a record: ``stages.distill.evaluations`` of a
    finished run, or the ``evaluations`` list (evaluations.json) kept with a partial one."""
    if "evaluations" in record:
        return [(h["iteration"], 100 * h["eval"]["mean"], 100 * h["eval"]["std"]) for h in record["evaluations"]]
    return [(h["iteration"], 100 * h["mean"], 100 * h["std"])
            for h in record.get("stages", {}).get("distill", {}).get("evaluations", [])]


def run_budget(record: dict) -> str:
    """The training budget a record ran with: experts x epochs, iterations, evaluation nets (and lr_teacher)."""
    cfg = record.get("config", {})
    b, d = cfg.get("buffer", {}), cfg.get("distill", {})
    return (f"{b.get('num_experts')} experts x {b.get('epochs')} epochs, {d.get('iterations')} iterations, "
            f"{cfg.get('eval', {}).get('num_eval')} evaluation nets" + (
                f" (distill.lr_teacher {d['lr_teacher']})" if "lr_teacher" in d else ""))


def budget(record: dict) -> str:
    """:func:`run_budget`, and the share of wrong training labels the record measured (asym40 flips 40% of
    four classes: 16% of all labels)."""
    rate = record.get("results", {}).get("noise_rate")
    return run_budget(record) + (f"; {100 * rate:.1f}% of the training labels wrong" if rate is not None else "")


def remark(record: dict) -> str:
    """What a record's ``partial`` or ``note`` field says (a run stopped early, diverged, ...) and the log
    points whose matching loss its distill stage found unstable, in brackets."""
    parts = [text for text in (record.get("partial"), record.get("note")) if text]
    distill = record.get("stages", {}).get("distill", {})
    unstable = distill.get("unstable_loss_iterations")
    if unstable:
        parts.append(f"unstable matching loss (up to {distill.get('max_matching_loss', float('nan')):.2f}) at "
                     f"{len(unstable)} log points from iteration {unstable[0]}")
    return f" ({'; '.join(parts)})" if parts else ""


def provenance_text(record: dict) -> str:
    """Seed, commit, device, wall time and command of a record."""
    return (f"seed {record.get('seed')}, commit {str(record.get('commit'))[:12]}, {record.get('device')}, "
            f"{record.get('wall_time_s')} s; `{record.get('command')}`")


def setting_of(name: str) -> str | None:
    """The setting of :data:`SETTINGS` a record's name (``<setting>-<arm>[-<tag>]``) belongs to, None for none.
    No setting's name starts another's followed by ``-``, so at most one matches."""
    return next((s for s in SETTINGS if name.startswith(f"{s}-")), None)


def curve_panel(name: str) -> str:
    """The panel of the curves plot a record belongs to: ``clean`` for ``clean/...``, else its
    :func:`setting_of`, else ``other``."""
    return "clean" if name.startswith("clean/") else setting_of(name) or "other"


def plot_curves(runs: dict[str, dict], path: Path) -> bool:
    """Test accuracy vs distillation iteration of ``runs`` (label -> record) as a PNG, one panel per setting
    (:func:`curve_panel`; TAD arms solid, the rest dashed) so that each legend stays readable; False without
    matplotlib (the page then links no plot)."""
    from tad_plugin.plotting import pyplot, save_png

    try:
        plt = pyplot("the results page's plots")
    except ImportError:
        return False
    curves = {label: pts for label, record in runs.items() if (pts := evaluations(record))}
    panels: dict[str, list[str]] = {}
    for label in curves:
        panels.setdefault(curve_panel(label), []).append(label)
    if not panels:
        return False
    order = [*SETTINGS, "clean", "other"]
    panels = dict(sorted(panels.items(), key=lambda kv: order.index(kv[0])))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (panel, labels) in zip(axes.flat, panels.items()):
        if len(labels) > 10:  # the default cycle repeats its colours after 10
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for label in labels:
            it, mean, std = zip(*curves[label])
            tad = runs[label].get("config", {}).get("tad", {}).get("enabled", False)
            ax.errorbar(it, mean, yerr=std, marker="o", ms=2.5, capsize=1.5, lw=1.2,
                        ls="-" if tad else "--", label=label.removeprefix(f"{panel}-").removeprefix("clean/"))
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("distillation iteration", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("CIFAR-10 IPC 10 distillation curves (mean +- std of the evaluation nets; TAD solid, without TAD dashed)",
                 fontsize=10)
    save_png(fig, path, dpi=110)
    return True


def plot_pairs(rows: list[tuple[str, float, float, dict | None, dict | None]], path: Path) -> bool:
    """The table as grouped bars, one group per setting: the paper's method and method + TAD, ours (the last
    evaluation; a tick marks the best point during distillation). ``rows`` = (setting, paper method, paper
    + TAD, our noisy record, our TAD record). False without matplotlib or without any finished record."""
    def acc(rec: dict | None, key: str) -> float | None:
        r = (rec or {}).get("results", {})
        return 100 * r[key] if key in r else None

    rows = [r for r in rows if acc(r[3], "test_acc_mean") is not None or acc(r[4], "test_acc_mean") is not None]
    if not rows:
        return False
    from tad_plugin.plotting import pyplot, save_png

    try:
        plt = pyplot("the results page's plots")
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.2))
    bars = (("paper", 1, "#bbbbbb", None), ("paper + TAD", 2, "#777777", None),
            ("ours", 3, "#9ecae1", 0), ("ours + TAD", 4, "#3182bd", 1))
    width = 0.2
    for j, (label, col, color, arm) in enumerate(bars):
        xs, hs, best = [], [], []
        for i, row in enumerate(rows):
            value = row[col] if arm is None else acc(row[3 + arm], "test_acc_mean")
            if value is not None:
                xs.append(i + (j - 1.5) * width)
                hs.append(value)
                best.append(None if arm is None else acc(row[3 + arm], "test_acc_best_mean"))
        ax.bar(xs, hs, width, color=color, label=label)
        for x, b in zip(xs, best):
            if b is not None:
                ax.plot([x - width / 2, x + width / 2], [b, b], color="black", lw=1.2)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(40, 70)
    ax.set_ylabel("test accuracy (%), IPC 10")
    ax.set_title("CIFAR-10 (ours: JPEG copy, budgets on the page); black tick = best point during distillation", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    save_png(fig, path, dpi=110)
    return True


#: Settings of our TAD that the paper's does not have, with the value that means "as the paper".
PAPER_TAD = {"tad": {"balance_classes": False, "warmup_confidence_penalty": 0.0, "recall_once": False,
                     "split": "per-expert", "loss_average": 1},
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


def pair_budget(noisy: dict | None, tad: dict | None) -> str:
    """The budget column of a table row: one budget when both arms ran the same, else each arm's."""
    found = {arm: short_budget(rec) for arm, rec in (("noisy", noisy), ("TAD", tad)) if rec is not None}
    if len(set(found.values())) <= 1:
        return next(iter(found.values()), "-")
    return "; ".join(f"{arm} {text}" for arm, text in found.items())


def _seed_acc(record: dict | None, seeds: list[dict]) -> str:
    """A table entry: :func:`_acc` of the seed-0 record, or with finished runs of several seeds the mean +- std
    (n - 1) of their final accuracies."""
    if len(seeds) < 2:
        return _acc(record)
    accs = [100 * r["results"]["test_acc_mean"] for r in seeds]
    return f"{statistics.fmean(accs):.1f} +- {statistics.stdev(accs):.1f} over {len(accs)} seeds"


def _acc(record: dict | None) -> str:
    if record is None:
        return "not run"
    r = record.get("results", {})
    if "test_acc_mean" not in r:
        return "incomplete"
    last = f"{100 * r['test_acc_mean']:.1f} +- {100 * r['test_acc_std']:.1f}"
    if "test_acc_best_mean" not in r:
        return last
    return f"{last} (best {100 * r['test_acc_best_mean']:.1f} +- {100 * r['test_acc_best_std']:.1f} @ {r['best_iteration']})"


#: The paper's clean MTT row (CIFAR-10, IPC 10) and issue 3's target for it on the JPEG copy.
PAPER_CLEAN_MTT, CLEAN_TARGET = 65.3, 63.0


def finished_clean(results: Path) -> list[tuple[str, dict]]:
    """The clean-label MTT records under ``results/clean`` that reached a final accuracy, as ``(name, record)``."""
    done = [(p.stem, json.loads(p.read_text())) for p in sorted((results / "clean").glob("*.json"))]
    return [(n, r) for n, r in done if "test_acc_mean" in r.get("results", {})]


def best_clean(results: Path) -> tuple[str, dict] | None:
    """The finished clean-label MTT record under ``results/clean`` with the highest final accuracy, as
    ``(name, record)``; None when there is none."""
    done = finished_clean(results)
    return max(done, key=lambda nr: nr[1]["results"]["test_acc_mean"]) if done else None


def clean_gap_lines(results: Path) -> list[str]:
    """A table of every finished MTT + TAD record in ``results`` against the finished clean-label MTT record of
    the same budget (:func:`run_budget`; clean records stopped early or noted as ``diverged`` do not count),
    beside the paper's gap for its noise; [] when no budget matches.
    The paper's TAD ends 0.7-1.4 points below its clean MTT; the absolute targets ask more of this copy."""
    clean: dict[str, tuple[str, dict]] = {}
    for name, rec in finished_clean(results):
        if "partial" in rec or rec.get("note", "").startswith("diverged"):  # a run gone wrong sets no gap
            continue
        key = run_budget(rec)
        if key not in clean or rec["results"]["test_acc_mean"] > clean[key][1]["results"]["test_acc_mean"]:
            clean[key] = (name, rec)
    rows = []
    for path in sorted(results.glob("*.json")):
        rec = json.loads(path.read_text())
        cfg = rec.get("config", {})
        if (cfg.get("method", "mtt") != "mtt" or not cfg.get("tad", {}).get("enabled")
                or "test_acc_mean" not in rec.get("results", {}) or run_budget(rec) not in clean):
            continue
        setting = setting_of(path.stem)
        if setting is None:
            continue
        name, ref = clean[run_budget(rec)]
        tad, ref_acc = 100 * rec["results"]["test_acc_mean"], 100 * ref["results"]["test_acc_mean"]
        paper = SETTINGS[setting][2]
        rows.append(f"| `{path.stem}` | {run_budget(rec)} | {tad:.1f} | `clean/{name}` {ref_acc:.1f} | "
                    f"{tad - ref_acc:+.1f} | {paper} vs {PAPER_CLEAN_MTT}: {paper - PAPER_CLEAN_MTT:+.1f} |")
    if not rows:
        return []
    return ["", "MTT + TAD against clean-label MTT at the same budget (the gap TAD leaves to training without noise; "
                "the paper's TAD rows sit 0.7-1.4 points below its clean MTT, so on this copy a TAD arm reaches the "
                "absolute targets only where clean MTT clears them by that much):", "",
            "| run | budget | MTT + TAD | clean MTT | gap | paper: TAD vs clean |", "| --- | --- | ---: | ---: | ---: | --- |",
            *rows]


def page(results: Path = RESULTS) -> str:
    """The results page (Markdown) from the cells' JSON files in ``results``."""
    def load(cell: str) -> dict | None:
        path = results / f"{cell}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    lines = ["# Results", "", "## CIFAR-10, IPC 10: method vs method + TAD", "",
             "Generated by `python examples/reproduce_cifar10.py --page` from the JSON files in `cifar10/` "
             "(each holds the command, config, seed, commit, device and wall time of its run). Accuracy: mean "
             "+- std over the evaluation nets at the end of distillation (and, in brackets, the best evaluation point "
             "during distillation and its iteration, the number the papers report), clean test set; where a cell has "
             "finished runs of several training seeds (`--seeds`), the mean +- std of their final accuracies. "
             "Pixels: the "
             "JPEG-compressed CIFAR-10 copy (quality 75) for every run recorded here so far (`--dataset "
             "/root/cifar10.npz`, decoded from that copy): absolute numbers differ a little from the official "
             "pixels; arms on the same copy compare fairly.", "",
             "| setting | paper method | paper + TAD | ours | ours + TAD | target | met | our budget |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    pairs = []
    for setting, (_, p_noisy, p_tad, target, gain) in SETTINGS.items():
        noisy, tad = load(f"{setting}-noisy"), load(f"{setting}-tad")
        seeds = {arm: seed_records(f"{setting}-{arm}", results) for arm in ARMS}
        pairs.append((setting, p_noisy, p_tad, noisy, tad))
        met = "-"
        if seeds["noisy"] and seeds["tad"]:
            ours_noisy, ours_tad = (statistics.fmean(100 * r["results"]["test_acc_mean"] for r in seeds[arm])
                                    for arm in ("noisy", "tad"))
            met = "yes" if ours_tad >= target and ours_tad - ours_noisy >= gain else "no"
        lines.append(f"| {setting} | {p_noisy} | {p_tad} | {_seed_acc(noisy, seeds['noisy'])} | "
                     f"{_seed_acc(tad, seeds['tad'])} | TAD >= {target}, >= +{gain} | {met} | {pair_budget(noisy, tad)} |")
    beyond = [f"{setting}: {', '.join(extra)}" for setting, *_, tad in pairs if (extra := beyond_paper(tad))]
    if beyond:
        lines += ["", "TAD arms run with settings the paper's TAD does not have (each measured against the paper's "
                      "settings in its record's note and in the variants below): " + "; ".join(beyond) + "."]
    if plot_pairs(pairs, results / "pairs.png"):
        lines += ["", "![method vs method + TAD](cifar10/pairs.png)"]
    clean = best_clean(results)
    if clean is not None:
        name, rec = clean
        lines += ["", f"Clean-label reference (MTT without noise, its best run here; the paper's MTT: "
                      f"{PAPER_CLEAN_MTT}, issue 3's target on this copy >= {CLEAN_TARGET}): `clean/{name}` {_acc(rec)}; "
                      f"{budget(rec)}."]
    lines += clean_gap_lines(results)
    lines += ["", "Budgets, devices and commits:", ""]
    for cell in cells():
        rec = load(cell)
        if rec is not None:
            lines.append(f"- `{cell}`: {budget(rec)}; {provenance_text(rec)}{remark(rec)}")
            reused = rec.get("stages", {}).get("buffer", {}).get("reused")
            if reused:
                batch = rec["stages"]["buffer"].get("reused_meta", {}).get("buffer", {}).get("batch_size")
                lines.append(f"  - experts not trained here: distilled from the buffer `{reused}` (trained by "
                             f"another run with the same labels and TAD arm; expert batch {batch})")
            lines += trust_lines(cell, rec, results)
    lines += curves_section(results)
    lines += ["", "CIFAR-100 and Tiny ImageNet: their images are not available where these runs were made; "
              "those code paths are tested on generated data of the right shapes only.", "",
              "## Other results", ""]
    lines += [f"- [`{name}`]({name}): {what}" for name, what in OTHER_RESULTS]
    return "\n".join(lines) + "\n"


#: CIFAR-10's class names in label order.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def trust_lines(name: str, record: dict, results: Path) -> list[str]:
    """The final trusted space of a TAD run (an indented line, linking ``<name>.trust_report.png`` beside
    the record when it exists, and one naming its three least precise classes when the record has
    ``per_class``); none for a run without TAD."""
    buf = record.get("stages", {}).get("buffer", {})
    if "trusted_precision" not in buf:
        return []
    report = results / f"{name}.trust_report.png"
    link = f" ([trust report]({report.relative_to(results.parent)}))" if report.is_file() else ""
    levels = "".join(f"; trusted by >= {100 * float(level):.0f}% of the experts: precision "
                     f"{100 * s['trusted_precision']:.1f}%, recall {100 * s['clean_recall']:.1f}%"
                     for level, s in buf.get("by_vote", {}).items() if float(level) != 0.5)
    target = " (issue 5's target at sym40: >= 95 / >= 85)" if "sym40" in name.split("-") else ""
    lines = [f"  - final trusted space (trusted by >= 50% of the experts): {100 * buf['trusted_fraction']:.1f}% of the "
             f"training set, precision {100 * buf['trusted_precision']:.1f}%, recall of the clean samples "
             f"{100 * buf['clean_recall']:.1f}%{target}{levels}{link}"]
    from tad_plugin.trust_report import TrustReport, later_recalls_text, least_precise, least_recalled

    worst = least_precise(buf.get("per_class", []))
    if worst:
        def intruders(r: dict) -> str:
            return ", ".join(f"{m} {CLASSES[k]}" for k, m in r["intruders"])

        lines.append("  - least precise classes of that space: " + "; ".join(
            f"{CLASSES[r['class']]} {100 * r['precision']:.1f}% of {r['trusted']} (others: {intruders(r)})"
            for r in worst))
    later = buf.get("later_recalls")
    report_json = results / f"{name}.trust_report.json"
    if later is None and report_json.is_file():  # records written before the run summed them: from the report
        later = TrustReport.load_json(report_json).later_recalls()
    later = later_recalls_text(later)
    if later:
        lines.append(f"  - {later}")
    low = least_recalled(buf.get("per_class", []))
    if low:
        lines.append("  - least recalled classes (share of their correctly labelled samples in that space): " + "; ".join(
            f"{CLASSES[r['class']]} {100 * r['clean_recall']:.1f}%" for r in low))
    return lines


def curves_section(results: Path) -> list[str]:
    """The page's section on the distillation curves: every record under ``results`` (the cells, the clean
    MTT runs in ``clean/``, partial runs) in one plot and one table."""
    runs = {p.relative_to(results).with_suffix("").as_posix(): json.loads(p.read_text())
            for p in sorted(results.glob("*.json")) + sorted(results.glob("clean/*.json"))
            if not p.name.endswith(".trust_report.json")}
    runs = {k: v for k, v in runs.items() if evaluations(v)}
    if not runs:
        return []
    lines = ["", "## Distillation curves", "",
             "Test accuracy of the evaluation nets at every evaluation point (mean +- std %). `clean/` holds MTT on "
             "the clean labels (the engine's faithfulness check: the paper's MTT row is 65.3% on the official "
             "pixels with 100 experts x 50 epochs and 5000 iterations); `*-partial` runs stopped before their "
             "last iteration, and a record's note says what else to know of it (a divergence), in brackets below.", ""]
    if plot_curves(runs, results / "curves.png"):
        lines += ["![curves](cifar10/curves.png)", ""]
    iters = sorted({it for r in runs.values() for it, _, _ in evaluations(r)})
    lines += ["| run | " + " | ".join(str(i) for i in iters) + " |", "| --- |" + " ---: |" * len(iters)]
    for name, rec in runs.items():
        by_it = {it: f"{m:.1f}" for it, m, _ in evaluations(rec)}
        lines.append(f"| `{name}` | " + " | ".join(by_it.get(i, "") for i in iters) + " |")
    lines += ["", "Runs that are not cells of the table above:", ""]
    for name, rec in runs.items():
        if name not in cells():
            lines += [f"- `{name}`: {budget(rec)}; {provenance_text(rec)}{remark(rec)}"] + trust_lines(name, rec, results)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the cells and their commands")
    p.add_argument("--cell", action="append", choices=sorted(cells()) + ["all"], metavar="CELL",
                   help="run this cell (repeat for several; see --list); 'all': every cell of the table (the "
                        "c10n-worst ones need --cifar-n)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once on each GPU (whether several at once finish sooner in total than "
                        "one after another is not measured yet)")
    p.add_argument("--gpus", help="comma-separated CUDA device indices to spread the cells over (default: all)")
    p.add_argument("--page", action="store_true", help="write examples/results/README.md")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (torchvision), or an arrays file .npz")
    p.add_argument("--cifar-n", help="CIFAR-10_human.pt for the c10n-worst cells")
    p.add_argument("--out", default="runs/cifar10", help="run folders (one per cell)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full",
                   help="full: each method's own budget (hours per cell); long: 100 experts x 23 epochs, 5000 "
                        "iterations (~28 min per MTT cell on an H200); short: the page's recorded pairs' budget "
                        "(20 experts x 23 epochs, 1000 iterations; minutes per cell); --set overrides any")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0], metavar="0,1,2",
                   help="training seeds (the labels keep data.noise_seed): seed 0 is the cell's own run and record, "
                        "seed N runs as <cell>-seedN (--set seed=N); the page's table averages a cell's seeds")
    p.add_argument("--tag", help="a variant's name: runs go to OUT/<cell>-<tag> and records to "
                   "results/cifar10/<cell>-<tag>.json (listed on the page beside the table, not in it), so a run "
                   "with other --set values never replaces a cell's record")
    p.add_argument("--reuse-buffers", action=argparse.BooleanOptionalAction, default=True,
                   help="ATT's cells distil from the experts of the MTT cell of the same noise and arm, FTD's "
                        "from the DATM cell's, when that cell runs too or has run into --out (default); "
                        "--no-reuse-buffers trains their own")
    p.add_argument("--features-budget", type=float, default=FEATURES_BUDGET_S, metavar="SECONDS",
                   help="when a TAD cell needs the default SimCLR extractor and it does not exist yet, train it "
                        "first for this long (default: the recorded 10-minute recipe, 80.3%% kNN@10 on an H100)")
    args = p.parse_args()
    if args.cell and "all" in args.cell:
        args.cell = list(cells())
    if args.list:
        for cell in cells():
            cmd = command(cell, args.dataset, Path(args.out), args.cifar_n or "CIFAR-10_human.pt",
                          overrides(args.budget, args.set), tag=args.tag)
            print(f"{cell}: {' '.join(cmd)}{recorded_time(cell)}")
    code = (train_missing_extractor(args) or run_cells(args)) if args.cell else 0
    if args.page:
        from tad_plugin.files import atomic_write

        text = page()
        atomic_write(PAGE, lambda f: f.write(text.encode()))
        print(text)
    if not (args.list or args.cell or args.page):
        p.error("give --list, --cell CELL or --page")
    sys.exit(code)


if __name__ == "__main__":
    main()
