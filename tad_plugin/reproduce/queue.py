"""The queue page of the grid (``--queue``): the cells without a finished record, in batches that each fit one
GPU's time window, with their commands; the planning figures and the small simulation that estimate a batch's
time."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .grid import (
    ABLATION_CELLS,
    AUDIT_DETECTORS,
    AUDIT_ONLY_LABEL_SETS,
    BUDGETS,
    DETECTION_LABEL_SETS,
    FEATURES_BUDGET_S,
    GRID_BUDGET,
    IPCS,
    NOISES,
    TWO_STAGE_ARMS,
    Cell,
    arm_parts,
    audit_buffer,
    audit_job,
    audits_with_tad,
    budget_tag,
    budget_text,
    buffer_command,
    buffer_of,
    cells,
    first_stage,
    needs_cifar_n,
    needs_extractor,
    parse_buffer,
    read_epochs,
    record_name,
    run_name,
    sizes,
)

#: The order in which the grid's cells are run: (batch title, which cells); a cell goes to the first batch
#: that takes it.
QUEUE_ORDER: tuple[tuple[str, Callable[[Cell], bool]], ...] = (
    ("MTT: IPC 1 / 10 / 50, symmetric and asymmetric noise at 20% and 40%",
     lambda c: c.method == "mtt" and c.noise != "c10n-worst" and c.arm not in TWO_STAGE_ARMS),
    ("Table 3: DATM at IPC 50, asymmetric 20% and 40%, configurations A-F",
     lambda c: (c.method, c.ipc) == ABLATION_CELLS[:2] and c.noise in ABLATION_CELLS[2]),
    ("ATT from MTT's buffers (distillation only)", lambda c: c.method == "att" and c.noise != "c10n-worst"),
    ("CIFAR-10N worst: MTT and ATT", lambda c: c.noise == "c10n-worst" and c.method in ("mtt", "att")),
    ("Two-stage baselines: cleanlab or TAD's audit, then MTT", lambda c: c.arm in TWO_STAGE_ARMS),
    ("FTD and DATM rows", lambda c: c.method in ("ftd", "datm")),
)


def finished(cell: str, results: Path, budget: str = GRID_BUDGET) -> bool:
    """Whether ``cell`` has a record at ``budget`` (at the grid's own, its own or :data:`LEGACY_RECORDS`'; at
    another, ``<cell>-<budget>``) that reached its final evaluation."""
    stem = record_name(cell, results) if budget == GRID_BUDGET else run_name(cell, budget_tag(budget, None))
    path = results / f"{stem}.json"
    return path.is_file() and "test_acc_mean" in json.loads(path.read_text()).get("results", {})


#: Planning figures for QUEUE.md's batches, one H100 (fp32 experts): seconds per expert-epoch of a noisy buffer with
#: the GPU to itself (buffers and the extractor saturate the GPU), and a buffer's start (the process, the data, ZCA,
#: compiling); a buffer with TAD's outer loop costs TAD_BUFFER_FACTOR times a noisy one
#: (benchmarks/benchmark_tad_overhead.py: the loss pass and the batched division cost about what training on the
#: trusted subset saves), and GSAM experts GSAM_FACTOR times SGD ones (two forward-backward passes a step); a cell's
#: distillation and evaluations at the short budget's 1000 iterations with the GPU to itself (MTT's; a method whose
#: matching iteration costs more: DISTILL_METHOD_FACTOR, from
#: benchmarks/results/benchmark_inner_grad_h100_ipc10_*.json), and the share of the GPU it then keeps busy
#: (DISTILL_GPU_SHARE: two MTT distillations at once took as long as one alone, four ATT ones about 2.2x as long; the
#: batches recorded under results/cifar10/batches/ are set beside their estimates on the queue page); the inner
#: loop's work for the first expert group (compiling the anchors' matching step, embedding the training set,
#: distilling the anchors) and for each later group (its anchors only: the compiled step is kept per process; an
#: estimate until a multi-group run's phases.json measures it); the two-stage cells' first stage: cleanlab's 5 fold
#: models, one at a time, or TAD's audit pass with the 20 trained experts of the TAD buffer (TAD_AUDIT_S, beside the
#: training of that buffer when the batch does not train it anyway); the extractor's start and final evaluation
#: beyond its training budget; the window a batch must fit.
EXPERT_EPOCH_S = 0.35
BUFFER_START_S = 30.0
TAD_BUFFER_FACTOR = 1.0
GSAM_FACTOR = 2.0
DISTILL_S = {1: 210.0, 10: 245.0, 50: 540.0}
DISTILL_METHOD_FACTOR = {"att": 1.16}
DISTILL_GPU_SHARE = 0.55
#: The part of a short-budget distillation that does not grow with the iterations (compilation, the start, sharing
#: the GPU), from the IPC-10 records at 1000 iterations (the grid's cells) and 5000 (``sym40-noisy-e100-i5000``).
DISTILL_FIXED_SHARE = 0.55
ANCHORS_S = 110.0
ANCHORS_LATER_S = 40.0
CLEANLAB_S = 95.0
#: a process start like a buffer's (BUFFER_START_S), forward passes of 5 snapshots x 20 experts over the training set
#: (about a third of an expert-epoch each), the division, and the table, report and pruned copy written: an estimate
#: until an audit-<noise>-tad20 record measures it
TAD_AUDIT_S = 60.0
EXTRACTOR_EXTRA_S = 20.0
WINDOW_S = 25 * 60.0
#: Jobs at once in a batch, and the buffers a batch trains at once: 80 GB holds two 20-expert buffers at once, not
#: four; the extractor is the third job, a distillation the fourth.
QUEUE_JOBS = 4
QUEUE_BUFFERS = 2


@dataclass
class _SimJob:
    name: str
    saturates: bool  # keeps the whole GPU busy when alone (buffers, extractor); else DISTILL_GPU_SHARE of it
    work: float  # seconds with the GPU to itself; the extractor's: wall seconds (it trains for a fixed time)
    after: str | None = None  # the job it waits for
    pause_at: float | None = None  # work done when it needs the extractor (a TAD buffer's anchors)
    done: float = 0.0


def _training(buf: str, budget: str, experts: int, group: int, extractor: bool) -> tuple[float, float | None]:
    """(work, pause_at) of a :class:`_SimJob` that trains ``experts`` experts with the settings of the buffer
    ``buf`` under ``budget``, ``group`` at a time: their epochs (TAD's outer loop and GSAM at their factors), plus
    the anchors once per group when the inner loop runs; ``pause_at``: the work done when the inner loop first
    needs the extractor, when ``extractor`` (it trains beside) and they need it, else None."""
    from tad_plugin.cli_options import add_settings_options
    from tad_plugin.runs import config_from_args
    from tad_plugin.trust_loop import Schedule

    _, arm, rec, zca = parse_buffer(buf)
    epochs = read_epochs(rec, zca)
    _, outer, inner = arm_parts(arm)
    train = (experts * epochs * EXPERT_EPOCH_S * (TAD_BUFFER_FACTOR if outer else 1)
             * (GSAM_FACTOR if rec.startswith("gsam") else 1))
    work = BUFFER_START_S + train + (ANCHORS_S + ANCHORS_LATER_S * (-(-experts // group) - 1) if inner else 0.0)
    if not (extractor and needs_extractor(buf, ())):
        return work, None
    cmd = buffer_command(buf, "cifar10", Path("runs"), "CIFAR-10_human.pt", budget)
    settings = argparse.ArgumentParser()  # the options of `tad buffer`
    add_settings_options(settings)
    schedule = Schedule.of(config_from_args(settings.parse_args(cmd[cmd.index("buffer") + 1:])).tad)
    first = next((t for t in range(epochs) if schedule.recalibrates(t)), epochs)  # features first needed
    return work, BUFFER_START_S + train * first / epochs


def batch_jobs(names: Sequence[str], budget: str = "short", features_s: float = FEATURES_BUDGET_S,
               extractor: bool = True) -> list[_SimJob]:
    """The jobs a ``--cell`` run of ``names`` starts on a fresh machine (every buffer trained, the extractor
    too when a buffer needs it and ``extractor``), in :func:`plan`'s order, with :func:`estimate`'s costs: the
    anchors once per expert group, a distillation's iteration share (1 - :data:`DISTILL_FIXED_SHARE`) scaled to
    ``budget``'s iterations (the planning figures are the short budget's); a two-stage buffer after its first stage
    (:func:`~.grid.first_stage`, once per label set and detector): cleanlab's :data:`CLEANLAB_S`, or TAD's audit
    pass :data:`TAD_AUDIT_S` after the training of its TAD buffer (:func:`~.grid.audit_buffer`; one job with the
    batch's own training of that buffer)."""
    experts, group, iterations = sizes(budget)[:3]
    distill = DISTILL_FIXED_SHARE + (1 - DISTILL_FIXED_SHARE) * iterations / sizes("short")[2]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(buffer_of(cells()[name]), []).append(name)
    stages = {buf: (noise, first_stage(arm)) for buf in groups for noise, arm, _, _ in [parse_buffer(buf)]
              if arm in TWO_STAGE_ARMS}
    trained = [*groups, *(audit_buffer(noise) for noise, detector in stages.values() if detector != "cleanlab")]
    needs = extractor and any(needs_extractor(b, ()) for b in trained)
    jobs = [_SimJob("extractor", True, features_s + EXTRACTOR_EXTRA_S)] if needs else []

    def add_buffer(buf: str, after: str | None = None) -> None:
        if all(j.name != f"buffer-{buf}" for j in jobs):
            work, pause = _training(buf, budget, experts, group, needs)
            jobs.append(_SimJob(f"buffer-{buf}", True, work, after=after, pause_at=pause))

    for buf, members in groups.items():
        stage_one = None
        if buf in stages:  # the first stage, once per noise setting and detector
            noise, detector = stages[buf]
            stage_one = audit_job(noise, detector)
            if all(j.name != stage_one for j in jobs) and detector == "cleanlab":
                jobs.append(_SimJob(stage_one, False, CLEANLAB_S))
            elif all(j.name != stage_one for j in jobs):
                add_buffer(audit_buffer(noise))
                jobs.append(_SimJob(stage_one, False, TAD_AUDIT_S, after=f"buffer-{audit_buffer(noise)}"))
        add_buffer(buf, stage_one)
        jobs += [_SimJob(n, False, DISTILL_S[cells()[n].ipc] * DISTILL_METHOD_FACTOR.get(cells()[n].method, 1.0)
                         * distill, after=f"buffer-{buf}") for n in members]
    return jobs


def audit_batch_jobs(missing: Mapping[str, Sequence[str]], budget: str = "short",
                     features_s: float = FEATURES_BUDGET_S, extractor: bool = True) -> list[_SimJob]:
    """The jobs an ``--audit-only`` run of the detection rows ``missing`` (label set -> its detectors left, of
    :data:`AUDIT_DETECTORS`) starts on a fresh machine (the extractor too when a TAD audit is left and
    ``extractor``), in :func:`~.running.audit_jobs`' order, with :func:`estimate`'s costs: cleanlab's
    :data:`CLEANLAB_S`, a TAD audit the training of its own experts (5 in one group, or ``budget``'s) with the
    settings of its label set's :func:`~.grid.audit_buffer`."""
    experts, group = sizes(budget)[:2]
    needs = extractor and any(d != "cleanlab" for left in missing.values() for d in left)
    jobs = [_SimJob("extractor", True, features_s + EXTRACTOR_EXTRA_S)] if needs else []
    counts = {"tad5": (5, 5), "tad20": (experts, group)}
    for detector in AUDIT_DETECTORS:
        for label_set in (s for s, left in missing.items() if detector in left):
            name = audit_job(label_set, detector)
            if detector == "cleanlab":
                jobs.append(_SimJob(name, False, CLEANLAB_S))
                continue
            work, pause = _training(audit_buffer(label_set), budget, *counts[detector], needs)
            jobs.append(_SimJob(name, True, work, pause_at=pause))
    return jobs


def gpu_shares(demands: Mapping[str, float]) -> dict[str, float]:
    """The share of one GPU each running job gets, from the share it would use alone (``demands``, job -> (0, 1]):
    everyone's demand when they add up to at most 1, else the GPU split evenly, a job that needs less than an
    even split keeping only what it needs and the rest shared by the others (max-min fairness)."""
    shares, left, n = {}, 1.0, len(demands)
    for name, demand in sorted(demands.items(), key=lambda item: item[1]):
        shares[name] = min(demand, left / n)
        left, n = left - shares[name], n - 1
    return shares


def estimate(jobs: Sequence[_SimJob], slots: int = QUEUE_JOBS, step: float = 1.0) -> float:
    """Seconds until the last of ``jobs`` ends on one GPU, started as :func:`run_parallel` starts them (``slots``
    at once, the earliest free job first): the running jobs split the GPU by :func:`gpu_shares` (a buffer and
    the extractor ask for all of it, a distillation for :data:`DISTILL_GPU_SHARE`) and each advances by its share
    over its demand (the extractor trains for its wall-clock budget whatever its share); a TAD buffer stops at its
    ``pause_at`` until the extractor ends, asking for nothing meanwhile."""
    return simulate(jobs, slots, step)[0]


def simulate(jobs: Sequence[_SimJob], slots: int = QUEUE_JOBS, step: float = 1.0) -> tuple[float, int]:
    """:func:`estimate`'s seconds, and the most buffers (``buffer-`` jobs) it has training at once (GPU memory)."""
    jobs = [_SimJob(**{**j.__dict__, "done": 0.0}) for j in jobs]
    peak = 0
    ended: set[str] = set()
    running: list[_SimJob] = []
    pending = list(jobs)
    t = 0.0
    while pending or running:
        for job in [j for j in pending if j.after is None or j.after in ended][:max(0, slots - len(running))]:
            pending.remove(job)
            running.append(job)
        peak = max(peak, sum(j.name.startswith("buffer-") for j in running))
        if not running:
            raise ValueError("a job waits for one that is not in the batch")
        active = [j for j in running
                  if j.pause_at is None or j.done < j.pause_at or "extractor" in ended]  # not waiting for it
        demand = {j.name: 1.0 if j.saturates else DISTILL_GPU_SHARE for j in active}
        shares = gpu_shares(demand)
        for j in active:
            j.done += step if j.name == "extractor" else step * shares[j.name] / demand[j.name]
        t += step
        for j in [j for j in running if j.done >= j.work - 1e-9]:
            running.remove(j)
            ended.add(j.name)
    return t, peak


def batches(names: Sequence[str], budget: str = "short", window: float = WINDOW_S) -> list[tuple[list[str], float]]:
    """``names`` (cells in the queue's order) cut into batches for one GPU window each, with their
    :func:`estimate`: the cells that share buffers of a noise setting, recipe and preprocessing go together with
    both arms (a noisy cell beside its TAD pair) while the estimate fits ``window``; a group that does not fit
    alone is split by arm (:func:`piece`: the two arms of TAD's audit stay together); a single piece that still
    does not fit gets a batch of its own (its estimate says it). A batch trains at most :data:`QUEUE_BUFFERS`
    buffers at once (GPU memory; a two-stage buffer starts after its first stage, so after the TAD buffer of a TAD
    audit)."""
    def fits(names: list[str]) -> tuple[bool, float]:
        took, peak = simulate(batch_jobs(names, budget))
        return took <= window and peak <= QUEUE_BUFFERS, took

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
        pieces = list(dict.fromkeys(piece(n) for n in unit))
        if len(pieces) > 1 and (took > window or len(unit) > 1):
            todo[:0] = [[n for n in unit if piece(n) == p] for p in pieces]
            continue
        out.append((unit, took))
    if current:
        out.append((current, estimate(batch_jobs(current, budget))))
    return out


def piece(cell: str) -> str:
    """What keeps ``cell`` in one batch with others of its buffer group (:func:`batches`, :func:`with_riders`): its
    arm, or for a two-stage arm whose first stage is TAD's audit that stage's detector, shared by both such arms
    (split, each batch would train the TAD buffer the audit reads again)."""
    arm = cells()[cell].arm
    return first_stage(arm) if audits_with_tad(arm) else arm


def reads(cell: str) -> set[str]:
    """The buffers whose experts the cell ``cell`` needs: its own, and for a two-stage arm whose first stage is
    TAD's audit the TAD buffer that audit reads (:func:`~.grid.audit_buffer`)."""
    c = cells()[cell]
    own = {buffer_of(c)}
    if audits_with_tad(c.arm):
        own.add(audit_buffer(c.noise))
    return own


def with_riders(names: list[str], took: float, candidates: Sequence[str], budget: str = "short",
                window: float = WINDOW_S) -> tuple[list[str], float]:
    """``names`` (a batch of :func:`batches`) with each of ``candidates`` (cells of later queue sections, in
    order) that reads one of the batch's buffers (:func:`reads`: a TAD-audit two-stage cell the TAD buffer of its
    first stage too; those of one :func:`piece`, noise setting, recipe and preprocessing together) added while the
    estimate stays within ``window`` (or within ``took`` for a batch already over
    it) and the batch trains at most :data:`QUEUE_BUFFERS` buffers at once: a buffer lives on the machine that
    trained it only, so a cell distilled from it in the same batch costs its distillation alone (a TAD-audit
    two-stage cell its audit pass, buffer and distillation), later a second training of the buffer. Returns the
    batch and its estimate."""
    bufs = {buffer_of(cells()[n]) for n in names}
    riders: dict[tuple, list[str]] = {}  # a TAD-audit arm's cells of one noise, recipe and preprocessing together
    for cand in candidates:
        if reads(cand) & bufs:
            c = cells()[cand]
            together = piece(cand) != c.arm  # TAD's audit's two arms
            riders.setdefault((c.noise, *parse_buffer(buffer_of(c))[2:], piece(cand)) if together else (cand,),
                              []).append(cand)
    for group in riders.values():
        trial, peak = simulate(batch_jobs(names + group, budget))
        if trial <= max(window, took) and peak <= QUEUE_BUFFERS:
            names, took = names + group, trial
    return names, took


def recorded_batches(results: Path) -> list[tuple[str, float, float]]:
    """The planner against the batches recorded in ``batches/<name>/schedule.md`` of the records folder
    ``results`` (the runner's table of what ran when): ``(name, measured seconds, estimated seconds)`` for each
    batch of grid cells at the short budget, in name order; the estimate is :func:`estimate` of its cells'
    :func:`batch_jobs`, the extractor included when the batch trained one. Batches that ran jobs their cells do not
    need (the label audits of ``--audit``) are left out: their cells alone would under-count them."""
    from .running import read_schedule

    out = []
    for table in sorted((results / "batches").glob("*/schedule.md"), key=lambda f: f.parent.name):
        times, _ = read_schedule(table)
        members = [name for name in times if name in cells()]
        jobs = batch_jobs(members, extractor="extractor" in times)
        if not times or set(times) - {job.name for job in jobs} - {"extractor"}:
            continue
        took = max(ended for _, _, ended in times.values())
        out.append((table.parent.name, took, estimate(jobs)))
    return out


def queue(results: Path, budget: str = "short") -> str:
    """The queue page (Markdown): the cells without a finished record, in :data:`QUEUE_ORDER`'s sections, cut
    into :func:`batches` of one GPU window each, with the command and the estimated time of each."""
    grid = cells()
    left = [n for n in grid if not finished(n, results, budget)]
    lines = ["# CIFAR-10 grid: what is left", "",
             "Generated by `python reproduction/reproduce_cifar10.py --queue` from the cells without a finished "
             f"record in this folder: {len(left)} of {len(grid)} cells left. Budget: `--budget {budget}` "
             f"({budget_text(budget)}).", "",
             f"Each batch is one command for one H100 for at most {WINDOW_S / 60:.0f} minutes, on a fresh machine: it "
             "trains the shared buffers its cells read (and the SimCLR extractor when a TAD buffer needs it, beside "
             "them), distils each cell as soon as its buffer is done, and writes the records; commit them after "
             "each batch. The estimate assumes a noisy 20-expert buffer at "
             f"{EXPERT_EPOCH_S} s per expert-epoch with the GPU to itself (saturating jobs share it) after "
             f"{BUFFER_START_S:.0f} s to start, a TAD buffer "
             f"at {TAD_BUFFER_FACTOR}x that plus {ANCHORS_S:.0f} s for its first expert group's anchors and "
             f"{ANCHORS_LATER_S:.0f} s for each later group's, waiting for the extractor where "
             f"its inner loop first needs it, the extractor's {FEATURES_BUDGET_S:.0f} s, a two-stage cell's first "
             f"stage (cleanlab's {CLEANLAB_S:.0f} s, or the training of the TAD buffer whose experts TAD's audit reads "
             f"and {TAD_AUDIT_S:.0f} s for the audit pass), and "
             + ", ".join(f"{DISTILL_S[i] / 60:.1f} min" for i in IPCS) + " per IPC 1 / 10 / 50 distillation with "
             "the GPU to itself (" + ", ".join(f"{m.upper()}'s {f}x that" for m, f in DISTILL_METHOD_FACTOR.items())
             + f"), of which it keeps {DISTILL_GPU_SHARE:.0%} busy (jobs at once split the GPU, each "
             "getting what it needs or an even share); a batch marked `over the window` does not fit and needs a "
             "shorter budget or a larger GPU share."
             + (" `--audit` on a batch with a TAD buffer of MTT's recipe with ZCA adds the label-audit detection rows "
                "of its label set (a few minutes; docs/label-audit.md); the last section lists the rows left."
                if budget == GRID_BUDGET else f" The runs and records of this budget are named `<cell>-{budget}`."),
             ""]
    checked = recorded_batches(results) if budget == GRID_BUDGET else []
    if checked:
        lines += ["The same figures against the batches recorded so far (`batches/`): "
                  + "; ".join(f"{name} took {took / 60:.1f} min, estimated {est / 60:.1f}"
                              for name, took, est in checked) + ".", ""]
    taken: set[str] = set()
    rode: dict[str, int] = {}  # a cell of a later section -> the batch it rides in
    trains: dict[str, tuple[int, list[str]]] = {}  # a buffer -> the first batch that trains it, its cells
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
            trains.update((b, (number, names)) for b in bufs if b not in trains)
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
    if budget == GRID_BUDGET:  # the detection table is made at the grid's budget
        lines += detection_section(results, budget, trains, number, len(QUEUE_ORDER) + 1)
    return "\n".join(lines)


def audits_left(records: Path) -> dict[str, list[str]]:
    """The label sets of :data:`DETECTION_LABEL_SETS` -> their detectors (of :data:`AUDIT_DETECTORS`) without a
    record in ``<records>/audit/<label set>-<detector>/`` (``records``: the grid's records folder)."""
    return {label_set: [d for d in AUDIT_DETECTORS
                        if not (records / "audit" / f"{label_set}-{d}" / "result_audit.json").is_file()]
            for label_set in DETECTION_LABEL_SETS}


def audit_batches(missing: Mapping[str, Sequence[str]], budget: str = "short", window: float = WINDOW_S
                  ) -> list[tuple[list[str], float | None]]:
    """The label sets of ``missing`` (label set -> its detectors left) cut into ``--audit-only`` batches of one
    GPU window each, in order, with their :func:`estimate` (None for a budget without sizes: one batch): a label
    set joins the batch while the estimate fits ``window`` and the batch has at most :data:`QUEUE_BUFFERS`
    ``tad20`` audits (each trains a buffer's experts: GPU memory); one that does not fit alone gets a batch of its
    own (its estimate says it)."""
    if BUDGETS[budget] is None:
        return [(list(missing), None)] if missing else []

    def took(label_sets: list[str]) -> float:
        return estimate(audit_batch_jobs({s: missing[s] for s in label_sets}, budget))

    out: list[tuple[list[str], float | None]] = []
    current: list[str] = []
    for label_set in missing:
        trial = current + [label_set]
        if not current or (took(trial) <= window and sum("tad20" in missing[s] for s in trial) <= QUEUE_BUFFERS):
            current = trial
            continue
        out.append((current, took(current)))
        current = [label_set]
    return out + ([(current, took(current))] if current else [])


def with_audits(names: Sequence[str], missing: Mapping[str, Sequence[str]], budget: str = "short",
                extractor: bool = True, slots: int = QUEUE_JOBS) -> float:
    """The :func:`estimate` (``slots`` jobs at once) of the batch of cells ``names`` (none: an ``--audit-only``
    run) with the label audits ``missing`` (label set -> its detectors left): the cells' :func:`batch_jobs`, then
    the audits of :func:`audit_batch_jobs` that they do not already run (cleanlab's, the 5 TAD experts'; beside
    cells, whose batch trains the buffer, ``tad20`` reads it: its audit pass only). ``extractor``: whether it is
    to be trained when a buffer or audit needs it (False: one exists)."""
    jobs = batch_jobs(names, budget, extractor=extractor)
    started = {j.name for j in jobs}
    rows = {label_set: [d for d in left if not (names and d == "tad20")] for label_set, left in missing.items()}
    audits = audit_batch_jobs(rows, budget, extractor=extractor)
    return estimate(jobs + [j for j in audits if j.name not in started], slots=slots)


def detection_section(records: Path, budget: str, trains: Mapping[str, tuple[int, list[str]]], number: int,
                      section: int) -> list[str]:
    """The queue's section of the label-audit detection table's rows (:func:`audits_left` of the records folder
    ``records``): per label set, recorded, or the rows left and how they get made: ``--audit`` on the batch of
    ``trains`` (buffer -> batch number and cells) that trains its :func:`~.grid.audit_buffer` (with that batch's
    estimate with them), else :func:`audit_batches` of ``--audit-only`` commands, numbered after batch
    ``number``; estimates at ``budget``."""
    left = audits_left(records)
    lines = [f"## {section}. Label-audit detection rows", "",
             "The rows of the label-audit detection table (`audit/detection.md`, docs/label-audit.md), three per label "
             "set: TAD with the 20 experts of the grid's TAD buffer of MTT's recipe with ZCA (`tad20`), TAD with 5 "
             "experts of its own (`tad5`) and cleanlab with 5 folds (`cleanlab`). `--audit-only` trains the 20 "
             "experts where no batch trains that buffer.", ""]
    alone: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for label_set, detectors in left.items():
        buf = audit_buffer(label_set)
        if not detectors:
            where[label_set] = "recorded."
        elif label_set not in AUDIT_ONLY_LABEL_SETS and buf in trains:
            batch, names = trains[buf]
            took = with_audits(names, {label_set: detectors}, budget) if BUDGETS[budget] is not None else None
            when = "" if took is None else f"; about {took / 60:.0f} min with them" + (
                ", over the window" if took > WINDOW_S else "")
            where[label_set] = f"`--audit` on batch {batch} (it trains `{buf}`{when})."
        else:
            alone[label_set] = detectors
    cut = audit_batches(alone, budget)
    for i, (label_sets, _) in enumerate(cut, number + 1):
        where.update((s, f"batch {i} below.") for s in label_sets)
    for label_set, detectors in left.items():
        todo = f"{', '.join(detectors)} left: " if detectors else ""
        lines.append(f"- `{label_set}`: {todo}{where[label_set]}")
    lines.append("")
    for i, (label_sets, took) in enumerate(cut, number + 1):
        over = took is not None and took > WINDOW_S
        when = ("" if took is None else f", about {took / 60:.0f} min") + (" (over the window)" if over else "")
        c10n = " --cifar-n CIFAR-10_human.pt" if any(needs_cifar_n(s) for s in label_sets) else ""
        lines += [f"- batch {i}: the detection rows of {', '.join(f'`{s}`' for s in label_sets)}, without "
                  f"distilling{when}", "",
                  "  ```", f"  python reproduction/reproduce_cifar10.py --budget {budget} --dataset cifar10.npz{c10n} "
                  f"--gpus 0 --jobs {QUEUE_JOBS} \\",
                  "    " + " ".join(f"--audit-only {s}" for s in label_sets), "  ```", ""]
    return lines
