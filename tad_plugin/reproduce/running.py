"""Running the grid's jobs: the plan of a ``--cell`` request (the SimCLR extractor, the shared buffers, the
label audits and the cells, each with what it waits for), the jobs spread over GPUs, and each finished cell's
record copied to the records folder."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .grid import (
    AUDIT_DETECTORS,
    AUDIT_ONLY_LABEL_SETS,
    BUDGETS,
    GRID_BUDGET,
    TWO_STAGE_ARMS,
    Cell,
    audit_buffer,
    audit_commands,
    audit_dir,
    audit_done,
    audit_job,
    audits_with_tad,
    budget_tag,
    buffer_command,
    buffer_dir,
    buffer_of,
    cells,
    cleaning_done,
    command,
    first_stage,
    grid_records,
    needs_cifar_n,
    needs_extractor,
    record_name,
    resolve_cells,
    resolve_label_sets,
    run_name,
    seed_tag,
)
from .pages import run_budget


def gpu_ids(spec: str | None, count: int | None = None, visible: str | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each GPU to spread jobs over: those of ``spec`` ("0,1"), else every
    GPU this process sees, else none (the jobs run on the CPU).

    The indices of ``spec`` count the GPUs this process sees, as torch does: under ``CUDA_VISIBLE_DEVICES=2,3``
    (``visible``; None: this process's environment) index 0 is GPU 2, and its job gets ``CUDA_VISIBLE_DEVICES=2``.
    ``count``: how many GPUs this process sees (None: ``torch.cuda.device_count()``).

    Raises:
        SystemExit: ``spec`` has an entry that is not a whole number, one given twice, or one beyond the GPUs
            seen (any at all on a machine without a CUDA GPU: a job there would run on the CPU unnoticed).
    """
    if count is None:
        import torch

        count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    seen = [v.strip() for v in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
    if not spec:
        return seen
    parts = [g.strip() for g in spec.split(",") if g.strip()]
    if not parts or not all(g.isdigit() for g in parts) or len(set(map(int, parts))) != len(parts):
        raise SystemExit(f"--gpus {spec}: give distinct GPU indices, comma-separated, e.g. 0,1")
    beyond = [g for g in parts if int(g) >= count]
    if beyond and count == 0:
        raise SystemExit(f"--gpus {spec}: torch sees no CUDA GPU on this machine; leave --gpus out to run the jobs "
                         "on the CPU (--jobs at once)")
    if beyond:
        raise SystemExit(f"--gpus {spec}: this machine has {count} GPU(s) torch can see, indices 0 to {count - 1}; "
                         f"{beyond[0]} is not one of them (nvidia-smi -L lists them)")
    return [seen[int(g)] for g in parts]


def start_job(cmd: Sequence[str], gpu: str | None, **popen: Any) -> subprocess.Popen:
    """Start the job ``cmd`` with this process's environment, ``CUDA_VISIBLE_DEVICES`` = ``gpu`` (a :func:`gpu_ids`
    entry; None: unchanged), and on POSIX :func:`_job_setup`'s process group and signals; ``popen``: further
    ``subprocess.Popen`` arguments (its output)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return subprocess.Popen(list(cmd), env=env, preexec_fn=_job_setup(os.getpid()) if os.name == "posix" else None,
                            **popen)


#: The exit code :func:`run_parallel` gives a job it did not start because a job it waits for failed.
SKIPPED = -1
#: How the line that opens each attempt in a job's log starts (the time and the command follow).
ATTEMPT_MARK = "=== "
#: Seconds an interrupted runner gives each running job between SIGINT and SIGKILL: enough for a job to finish
#: writing the checkpoint or expert it is saving.
STOP_GRACE_S = 30.0


def run_parallel(jobs: dict[str, list[str]], logs: Path, slots: int, gpus: list[str],
                 on_done: Callable[[str], None] | None = None, poll_s: float = 2.0,
                 after: Mapping[str, Sequence[str]] | None = None, grace_s: float = STOP_GRACE_S) -> dict[str, int]:
    """Run the commands of ``jobs`` (name -> argv), at most ``slots`` at once per GPU; returns name -> exit code.

    ``after[name]`` lists jobs of ``jobs`` that must have exited with 0 before ``name`` starts; if one of them
    fails, ``name`` is not started and gets :data:`SKIPPED`. Of the jobs free to start, the earliest in ``jobs``'
    order starts first (list a buffer's cells right after it and they take the next free slots once it is done).

    Each job gets ``CUDA_VISIBLE_DEVICES`` set to the GPU with the fewest running jobs (left unset when ``gpus``
    is empty: one CPU queue of ``slots``), appends a line with the time and its command and then its stdout and
    stderr to ``logs/<name>.log`` (an earlier attempt's lines stay above), and is announced
    when it starts and ends. ``on_done(name)`` runs after each job that exits with 0 (if it raises, the job
    counts as failed with code 1). A job that fails does not stop the others; the caller decides what a non-zero
    code means. At the end a table of what ran where (GPU, start, end, wall time) is printed and written to
    ``logs/schedule.md``, and drawn as a timeline in ``logs/schedule.png`` where matplotlib is installed.

    The jobs stop with the runner, so that running it again (which resumes them) never runs a job twice at once:
    if it is interrupted (Ctrl-C, an error), each running job gets SIGINT -- a ``tad`` job then says in its log
    what it kept -- and SIGKILL if it is still there after ``grace_s`` seconds; if it is killed, the jobs get
    SIGKILL from the kernel (Linux; elsewhere they run on).

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
    try:
        _run_queue(jobs, logs, slots, queues, after, pending, running, codes, times, start, on_done, poll_s)
    finally:
        _stop(running, grace_s)
    table = schedule_lines(times, codes)
    print("\n".join(table), flush=True)
    from tad_plugin.files import atomic_write

    text = "\n".join(table) + "\n"
    atomic_write(logs / "schedule.md", lambda f: f.write(text.encode()))
    if times and importlib.util.find_spec("matplotlib") is not None:  # the plot extra; the table says it all too
        schedule_figure(times, codes, logs / "schedule.png")
    return codes


def _run_queue(jobs: dict[str, list[str]], logs: Path, slots: int, queues: list[str | None],
               after: Mapping[str, Sequence[str]], pending: list[str],
               running: dict[str, tuple[subprocess.Popen, str | None, Any, float]], codes: dict[str, int],
               times: dict[str, tuple[str | None, float, float]], start: float,
               on_done: Callable[[str], None] | None, poll_s: float) -> None:
    """:func:`run_parallel`'s loop: starts the jobs and collects them until none is pending or running."""
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
                print(f"[{time.monotonic() - start:7.0f} s] {name}: not started ({', '.join(failed)} did not finish)",
                      flush=True)
        load = {g: sum(1 for _, q, _, _ in running.values() if q == g) for g in queues}
        while pending and min(load.values()) < slots:
            startable = [n for n in pending if all(codes.get(d) == 0 for d in after.get(n, ()))]
            if not startable:
                break
            gpu = min(queues, key=lambda g: load[g])
            name = startable[0]
            pending.remove(name)
            log = open(logs / f"{name}.log", "a")  # a rerun keeps the interrupted attempt's lines above its own
            log.write(f"{ATTEMPT_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(jobs[name])}\n")
            log.flush()
            began = time.monotonic() - start
            proc = start_job(jobs[name], gpu, stdout=log, stderr=subprocess.STDOUT)
            running[name] = (proc, gpu, log, began)
            load[gpu] += 1
            print(f"[{began:7.0f} s] {name} started" + (f" on GPU {gpu}" if gpu is not None else "")
                  + f": {' '.join(jobs[name])}", flush=True)
        if running:
            time.sleep(poll_s)


def last_lines(log: Path, count: int = 12) -> list[str]:
    """The last ``count`` lines of the job log ``log`` that its latest attempt wrote (a progress bar's redraws as
    lines of their own), under the line that opened that attempt: an earlier attempt's end above it is not this
    failure's."""
    lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    opened = max((i for i, line in enumerate(lines) if line.startswith(ATTEMPT_MARK)), default=0)
    return lines[max(opened, len(lines) - count):]


def _stop(running: dict[str, tuple[subprocess.Popen, str | None, Any, float]], grace_s: float) -> None:
    """End the jobs still ``running`` (the runner was interrupted): SIGINT, then SIGKILL after ``grace_s``; each
    one's log file is closed (None: a job in the foreground, writing to the terminal)."""
    for proc, _, _, _ in running.values():
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for name, (proc, _, log, _) in running.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            log.close()
        print(f"{name}: stopped (exit {proc.returncode}); running the same command again resumes it", flush=True)


def _job_setup(parent: int) -> Callable[[], None]:
    """A job's ``preexec_fn`` (POSIX). The job gets a process group of its own, so that a Ctrl-C at the terminal
    reaches the runner only and the job gets one SIGINT, :func:`_stop`'s, not two (a second one while it saves
    would cut that short). SIGINT goes back to its default, so that this SIGINT reaches the job's own Ctrl-C
    handling even when the runner inherited SIGINT ignored (a shell ignores it in the commands it starts in the
    background). On Linux the job also gets SIGKILL when the process ``parent`` ends,
    killed or not; that C function is looked up here, in the parent: the child only calls it (nothing to import
    after the fork)."""
    prctl = None
    if sys.platform == "linux":
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:
            prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the runner ended before the signal was set
                os._exit(1)
    return setup


def schedule_lines(times: dict[str, tuple[str | None, float, float]], codes: dict[str, int]) -> list[str]:
    """What ran where, as a Markdown table: a row per job (GPU, start and end in seconds from the first start,
    wall time in minutes, exit code) in the order they started, then the jobs that did not start."""
    lines = ["| job | GPU | start (s) | end (s) | wall (min) | exit |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, (gpu, began, ended) in sorted(times.items(), key=lambda kv: kv[1][1]):
        lines.append(f"| {name} | {gpu if gpu is not None else '-'} | {began:.0f} | {ended:.0f} | "
                     f"{(ended - began) / 60:.1f} | {codes[name]} |")
    lines += [f"| {name} | - | - | - | - | not started |" for name in codes if name not in times]
    return lines


def read_schedule(path: Path) -> tuple[dict[str, tuple[str | None, float, float]], dict[str, int]]:
    """:func:`schedule_lines`' table read back from ``path`` (a run's ``logs/schedule.md``): the ``times`` (GPU or
    None, start, end) and exit ``codes`` of the jobs that ran, in the table's order; the jobs that did not start
    are left out."""
    times: dict[str, tuple[str | None, float, float]] = {}
    codes: dict[str, int] = {}
    for line in path.read_text().splitlines()[2:]:
        name, gpu, began, ended, _, code = (cell.strip() for cell in line.strip().strip("|").split("|"))
        if code != "not started":
            times[name] = (None if gpu == "-" else gpu, float(began), float(ended))
            codes[name] = int(code)
    return times, codes


#: The kinds of job a schedule figure colours apart, by name prefix (the rest: cells).
JOB_KINDS = {"extractor": ("SimCLR extractor", "tab:purple"), "buffer-": ("expert buffer", "tab:blue"),
             "audit-": ("label audit", "tab:orange"), "": ("cell (distillation)", "tab:green")}


def schedule_figure(times: Mapping[str, tuple[str | None, float, float]], codes: Mapping[str, int],
                    path: Path) -> None:
    """:func:`schedule_lines`' table as a timeline PNG at ``path``: a bar per job from its start to its end
    (minutes from the first start), coloured by kind (:data:`JOB_KINDS`), a failed job hatched with its exit
    code, its GPU in the label when there are several. Needs matplotlib (the ``plot`` extra)."""
    from tad_plugin.plotting import pyplot, save_png

    plt = pyplot("the schedule figure")
    rows = sorted(times.items(), key=lambda kv: kv[1][1])
    several = len({gpu for gpu, _, _ in times.values()}) > 1
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.35 * len(rows)))
    seen = set()
    for y, (name, (gpu, began, ended)) in enumerate(rows):
        kind = next(k for k in JOB_KINDS if name.startswith(k))
        label, colour = JOB_KINDS[kind]
        failed = codes.get(name, 0) != 0
        ax.barh(y, (ended - began) / 60, left=began / 60, color=colour, hatch="//" if failed else None,
                edgecolor="black" if failed else colour, label=None if kind in seen else label)
        seen.add(kind)
        ax.text(ended / 60, y, f" {name}" + (f" (GPU {gpu})" if several else "")
                + (f", exit {codes[name]}" if failed else ""), va="center", fontsize=8)
    end = max(ended for _, _, ended in times.values()) / 60
    ax.set(yticks=[], xlabel="minutes from the first start", xlim=(0, end * 1.45), ylim=(len(rows) - 0.5, -0.5),
           title=f"what ran when: {len(rows)} jobs, {end:.1f} min")
    ax.legend(loc="upper right", fontsize=8)
    save_png(fig, path)


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


def buffer_ready(path: Path, experts: int) -> bool:
    """Whether the trajectory store ``path`` holds at least ``experts`` finished experts."""
    from tad_plugin.engine.trajectories import TrajectoryStore

    try:
        return len(TrajectoryStore.open(path).finished()) >= experts
    except Exception:  # missing, partly written or unreadable: not ready
        return False


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


def audit_jobs(args: argparse.Namespace, requested: Sequence[str], training: set[str], experts: int
               ) -> dict[str, tuple[str, list[str], str | None, bool]]:
    """The label-audit jobs of a request that are neither recorded under ``--results`` nor finished under
    ``--out``: job name -> (its label set, argv, the buffer job it waits for or None, whether it trains TAD
    experts), by detector in :data:`~.grid.AUDIT_DETECTORS`' order, then label set.

    The label sets: with ``args.audit``, those whose TAD buffer of MTT's recipe with ZCA
    (:func:`~.grid.audit_buffer`) one of the cells ``requested`` reads, or trains for TAD's audit as its first
    stage; then ``args.audit_only``'s. ``tad20`` audits with the experts of that
    buffer when the buffer job is in ``training`` (it waits for it) or the buffer holds ``experts`` finished
    experts under ``--out``; else, and always for a label set of :data:`~.grid.AUDIT_ONLY_LABEL_SETS` (the grid
    trains no buffer on its labels), it trains its own.

    Raises:
        SystemExit: an unknown label set, a CIFAR-10N label set without ``--cifar-n``, or ``--tag`` / ``--seeds`` /
            another ``--budget`` than the grid's (the audits belong to the grid's own buffers).
    """
    out = Path(args.out)
    label_sets = []
    if args.audit:  # the label sets whose TAD buffer the cells read, or train for TAD's audit as their first stage
        for cell in map(cells().__getitem__, requested):
            if audit_buffer(cell.noise) == buffer_of(cell, args.set) or audits_with_tad(cell.arm):
                label_sets.append(cell.noise)
        label_sets = list(dict.fromkeys(label_sets))
    label_sets = list(dict.fromkeys([*label_sets, *resolve_label_sets(args.audit_only or [])]))
    if label_sets and (args.tag is not None or args.seeds != [0] or args.budget != GRID_BUDGET):
        raise SystemExit(f"--audit and --audit-only run the detection table's audits with the grid's own buffers at "
                         f"its {GRID_BUDGET} budget: drop --tag, --seeds and --budget")
    lacking = [label_set for label_set in label_sets if needs_cifar_n(label_set)]
    if lacking and not args.cifar_n:
        raise SystemExit(f"--audit-only {lacking[0]}: CIFAR-10N's labels need --cifar-n PATH (the official "
                         "CIFAR-10_human.pt)")
    recorded = grid_records(args.results) / "audit"
    found: dict[str, tuple[str, list[str], str | None, bool]] = {}
    for label_set in label_sets:
        buf = audit_buffer(label_set)
        job, trained = f"buffer-{buf}", buffer_dir(out, buf) / "buffer"
        own = label_set in AUDIT_ONLY_LABEL_SETS or not (job in training or buffer_ready(trained, experts))
        cmds = audit_commands(label_set, args.dataset, out, args.cifar_n, args.budget, args.set,
                              None if own else trained)
        for name, cmd in cmds.items():
            run = name.removeprefix("audit-")
            if (recorded / run / "result_audit.json").is_file() or audit_done(audit_dir(out) / run):
                continue  # recorded, or finished under --out (run_cells records it): not rewritten under readers
            tad20 = name.endswith("-tad20")
            waits = job if tad20 and not own and job in training else None
            found[name] = (label_set, cmd, waits, not name.endswith("-cleanlab") and (own or not tad20))
    return dict(sorted(found.items(), key=lambda item: AUDIT_DETECTORS.index(item[0].rsplit("-", 1)[1])))


def plan(args: argparse.Namespace) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, tuple]]:
    """The jobs of ``args.cell`` and ``args.audit_only``: ``(jobs, after, cells)``. ``jobs`` (name -> argv) holds the
    extractor when a buffer to train or a TAD audit needs it (``extractor``), each shared buffer not yet finished
    under ``--out`` (``buffer-<name>``), each followed by the cells that read it (``<cell>[-<tag>]``), the
    two-stage cells' first stage (``audit-<noise>-<detector>``, :func:`~.grid.first_stage` of their arm: cleanlab,
    or TAD's audit with the experts of the TAD buffer ``<noise>-tad-sgd-zca``, that buffer trained before it when
    it is not finished) before the first job that reads it when it has not finished under ``--out``
    (:func:`~.grid.cleaning_done`); last the label-audit jobs of :func:`audit_jobs` (``args.audit``,
    ``args.audit_only``; one that is also a first stage runs once, as that stage); ``after`` what each waits for (a
    cell its buffer, a two-stage buffer its first stage, or the two-stage cell itself when its buffer is done, the
    audit with a buffer's experts that buffer; no job waits for the extractor: the jobs that need it start beside
    it with ``tad.features_wait_s`` from :func:`features_wait`); ``cells`` maps a cell job to ``(Cell, buffer
    name, budget)`` for its record.

    Raises:
        SystemExit: a bad ``--tag`` or ``--seeds``, and what :func:`audit_jobs` and :func:`_first_stage` refuse."""
    from tad_plugin.engine.config import apply_overrides

    out, tag = Path(args.out), args.tag
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", tag):
        raise SystemExit(f"--tag {tag!r}: use letters, digits, '_' and '.' only (it becomes part of file names)")
    tag = budget_tag(args.budget, tag)
    if any(seed < 0 for seed in args.seeds):
        raise SystemExit(f"--seeds {args.seeds}: seeds are >= 0")
    requested = resolve_cells(args.cell or [])
    chosen = apply_overrides({}, list(args.set)).get("buffer", {}).get("num_experts")  # as the buffers get it
    experts = int(chosen) if chosen is not None else (BUDGETS[args.budget] or (100,))[0]
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
    # the two-stage cells' first stage, once per label set and detector, unless it finished under --out: the buffer
    # to train waits for it, or the cell itself when its buffer is done (it reads the stage's files too); TAD's audit
    # waits for the TAD buffer whose experts it reads, trained here when it is not finished
    cleaning: dict[str, list[str]] = {}
    for name, (c, buf, _) in meta.items():
        if c.arm not in TWO_STAGE_ARMS:
            continue
        detector = first_stage(c.arm)
        if cleaning_done(out, c.noise, detector, args.dataset):
            continue
        first = audit_job(c.noise, detector)
        if first not in cleaning:
            cleaning[first] = _first_stage(args, c, first, tag, experts, buffers, after)
        after[f"buffer-{buf}" if f"buffer-{buf}" in buffers else name] = [first]
    audits = {name: audit for name, audit in audit_jobs(args, requested, set(buffers), experts).items()
              if name not in cleaning}  # --audit's run of a first stage is that stage: one job
    trainers = [audit_buffer(label_set) for label_set, _, _, trains in audits.values() if trains]
    extractor = extractor_to_train([*(buf for buf, _ in buffers.values()), *trainers], args.dataset, args.set)
    ordered: dict[str, list[str]] = {}
    wait = features_wait(args.features_budget, args.set)
    waits = f"tad.features_wait_s={wait:g}"
    if extractor is not None:
        print(f"TAD's inner loop embeds with the SimCLR extractor {extractor}, which does not exist yet: it trains "
              f"({args.features_budget:.0f} s) beside the buffers and audits, and those that need it wait up to "
              f"{wait:.0f} s for it when their inner loop first does", flush=True)
        ordered["extractor"] = extractor_command(extractor, args.dataset, args.features_budget)

    def place(job: str) -> None:
        """Put ``job`` in ``ordered`` after what it waits for: a buffer after its first stage (and that stage
        after the TAD buffer it reads), followed by its cells."""
        if job in ordered:
            return
        for dep in after.get(job, ()):
            if dep in buffers or dep in cleaning:
                place(dep)
        if job in cleaning:
            ordered[job] = cleaning[job]
        elif job in buffers:
            buf, cmd = buffers[job]
            wanted = extractor is not None and needs_extractor(buf, args.set) and waits not in args.set
            ordered[job] = cmd + (["--set", waits] if wanted else [])
            ordered.update({name: jobs[name] for name in groups.get(job, [])})
        else:  # a cell of a finished buffer (a two-stage one after its first stage)
            ordered[job] = jobs[job]

    for job in [*buffers, *groups.get("", [])]:
        place(job)
    for name, (_, cmd, buffer_job, trains) in audits.items():
        if buffer_job is not None:
            after[name] = [buffer_job]
        ordered[name] = cmd + (["--set", waits] if trains and extractor is not None and waits not in args.set else [])
    return ordered, after, meta


def _first_stage(args: argparse.Namespace, cell: Cell, job: str, tag: str | None, experts: int,
                 buffers: dict[str, tuple[str, list[str]]], after: dict[str, list[str]]) -> list[str]:
    """The command of the two-stage cell ``cell``'s first stage, the audit job ``job`` (:func:`~.grid.audit_job` of
    the label set and :func:`~.grid.first_stage`), as ``--audit`` runs it. TAD's audit reads the 20 experts of
    the label set's TAD buffer (:func:`~.grid.audit_buffer`, the grid's own: no tag, seed 0): when that buffer is
    not finished under ``--out``, its job joins ``buffers`` and the audit waits for it in ``after``.

    Raises:
        SystemExit: TAD's audit still to run under ``tag`` (``--tag``, or a budget other than the grid's): it belongs
            to the grid's buffer, which a variant's settings must not train.
    """
    detector = first_stage(cell.arm)
    if detector == "cleanlab":
        return audit_commands(cell.noise, args.dataset, Path(args.out), args.cifar_n, args.budget, args.set)[job]
    out, buf = Path(args.out), audit_buffer(cell.noise)
    if tag is not None:
        raise SystemExit(f"--cell {cell.name}: its first stage, {job}, audits with the experts of the grid's own "
                         f"{buf} and has not finished under --out {out}; run it first without --tag and --budget "
                         f"(--cell {cell.name}), then the variant reads it")
    trained, buffer_job = buffer_dir(out, buf) / "buffer", f"buffer-{buf}"
    if buffer_job not in buffers and not buffer_ready(trained, experts):
        buffers[buffer_job] = (buf, buffer_command(buf, args.dataset, out, args.cifar_n, args.budget, args.set))
    if buffer_job in buffers:
        after[job] = [buffer_job]
    return audit_commands(cell.noise, args.dataset, out, args.cifar_n, args.budget, args.set, trained)[job]


def job_lines(jobs: Mapping[str, list[str]], after: Mapping[str, list[str]], per_gpu: int) -> list[str]:
    """What :func:`run_cells` would start (``--list`` with ``--cell`` / ``--audit-only``), from :func:`plan`'s
    ``jobs`` and ``after``: one line per job, its name, what it waits for and its command; the last line counts
    them (``per_gpu``: ``--jobs``)."""
    lines = []
    for name, cmd in jobs.items():
        waits = f" (after {', '.join(after[name])})" if after.get(name) else ""
        lines.append(f"{name}{waits}: {' '.join(cmd)}")
    lines.append(f"{len(jobs)} job(s) to run, {per_gpu} at a time per GPU; the same command without --list runs "
                 "them" if jobs else "nothing to run: every job asked for is finished under --out or recorded")
    return lines


def run_cells(args: argparse.Namespace) -> int:
    """Run the ``--cell`` cells and the buffers they need, and the label audits of ``--audit`` and
    ``--audit-only`` (:func:`plan`; one job in the foreground, several through :func:`run_parallel`), recording
    each finished cell and audit; 0 if all passed."""
    out = Path(args.out)
    gpus = gpu_ids(args.gpus)  # a wrong index is refused before anything runs
    jobs, after, meta = plan(args)
    if jobs and args.dataset != "cifar10" and not Path(args.dataset).exists():  # before any log is written
        raise SystemExit(f"--dataset {args.dataset}: no such file; give the CIFAR-10 arrays file (.npz) or cifar10 "
                         "for torchvision's copy")
    reads_cifar_n = any(flag == "--cifar-n" and value == args.cifar_n
                        for argv in jobs.values() for flag, value in zip(argv, argv[1:]))
    if reads_cifar_n and not Path(args.cifar_n).is_file():
        raise SystemExit(f"--cifar-n {args.cifar_n}: no such file; give the official CIFAR-10_human.pt")
    lock = hold_out(out) if jobs else None  # a second runner on this --out stops here
    try:
        return _run_jobs(args, out, gpus, jobs, after, meta)
    finally:
        if lock is not None:
            lock.close()


def hold_out(out: Path) -> IO[str] | None:
    """Take the runner's lock of ``out`` (``out/.reproduce.lock``) for this process, so that a second runner on the
    same ``--out`` stops at once instead of training the same shared buffers twice; the lock ends with the process,
    killed or not. None where file locks are not available (not POSIX).

    Raises:
        SystemExit: another runner holds it.
    """
    try:
        import fcntl
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / ".reproduce.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"--out {out}: another reproduce run is using this folder; wait for it to end, or give "
                         f"another --out") from None
    return handle


def _run_jobs(args: argparse.Namespace, out: Path, gpus: list[str], jobs: dict[str, list[str]],
              after: dict[str, list[str]], meta: dict[str, tuple]) -> int:
    """:func:`run_cells` once its checks passed and it holds ``out``'s lock."""
    for name, (_, buf, _) in meta.items():
        print(f"{name} distils from the experts of {buf} ({buffer_dir(out, buf) / 'buffer'})", flush=True)
    records = grid_records(args.results)
    for run in sorted(p.parent for p in audit_dir(out).glob("*/result_audit.json")):  # finished, not yet recorded
        if audit_done(run) and not (records / "audit" / run.name / "result_audit.json").is_file():
            collect_audit(f"audit-{run.name}", out, records)

    def done(name: str) -> None:
        if name in meta:
            cell, buf, budget = meta[name]
            collect(name, out, records, cell, {"buffer": buf, "budget": budget})
        elif name.startswith("audit-"):
            collect_audit(name, out, records)

    if len(jobs) == 1 and args.jobs == 1:  # in the foreground, on the first GPU of --gpus (if given)
        (name, cmd), = jobs.items()
        gpu = gpus[0] if args.gpus else None
        print(" ".join(cmd) + (f"  (CUDA_VISIBLE_DEVICES={gpu})" if gpu is not None else ""), flush=True)
        proc = start_job(cmd, gpu)
        try:
            code = proc.wait()
        finally:  # interrupted: the job gets SIGINT and time to keep its work, as run_parallel's jobs do
            if proc.poll() is None:
                _stop({name: (proc, None, None, 0.0)}, STOP_GRACE_S)
        if code != 0:
            print(f"FAILED {name} (exit {code}): its output is above", file=sys.stderr)
            return 1
        done(name)
        return 0
    codes = run_parallel(jobs, out / "logs", args.jobs, gpus, on_done=done, after=after)
    failed = sorted(c for c, rc in codes.items() if rc not in (0, SKIPPED))
    for name in failed:
        print(f"FAILED {name} (exit {codes[name]}); last lines of {out / 'logs' / (name + '.log')}:", file=sys.stderr)
        print("\n".join("    " + line for line in last_lines(out / "logs" / f"{name}.log")), file=sys.stderr)
    return 1 if failed else 0
