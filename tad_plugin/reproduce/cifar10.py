"""Reproduce the paper's CIFAR-10 comparisons (Tables 1-3: MTT, FTD, DATM and ATT with and without TAD at
IPC 1 / 10 / 50 under symmetric and asymmetric noise at rates 0.2 and 0.4, CIFAR-10N worst, and the ablation of
TAD's parts on DATM), one command per cell.

    python reproduction/reproduce_cifar10.py --list                              # every cell and its command
    python reproduction/reproduce_cifar10.py --cell mtt-ipc50-sym40-tad --budget short --dataset /data/cifar10.npz
    python reproduction/reproduce_cifar10.py --cell 'mtt-*-sym40-*' --budget short --dataset /data/cifar10.npz \\
        --gpus 0 --jobs 4                                                    # a batch packed onto one GPU
    python reproduction/reproduce_cifar10.py --cell 'datm-ipc50-asym40-?' --budget short \\
        --dataset /data/cifar10.npz --gpus 0,1 --jobs 2                      # Table 3 under asym40
    python reproduction/reproduce_cifar10.py --cell all --budget short --dataset /data/cifar10.npz \\
        --cifar-n /data/CIFAR-10_human.pt                                    # the whole grid
    python reproduction/reproduce_cifar10.py --cell mtt-ipc10-asym40-tad --budget short \\
        --set tad.balance_classes=false \\
        --tag nobal --dataset /data/cifar10.npz                              # a variant: its own runs and record
    python reproduction/reproduce_cifar10.py --audit-only c10n-aggre --audit-only c10n-random1 --budget short \\
        --dataset /data/cifar10.npz --cifar-n /data/CIFAR-10_human.pt --gpus 0 --jobs 4  # label-audit rows only
    python reproduction/reproduce_cifar10.py --queue                             # cifar10/QUEUE.md: what is left
    python reproduction/reproduce_cifar10.py --page                              # results page from the records

Cells are named ``<method>-ipc<N>-<noise>-<arm>``: method ``mtt``, ``ftd``, ``datm`` or ``att``; IPC 1, 10 or
50; noise ``sym20``, ``sym40``, ``asym20``, ``asym40`` (CIFAR-10's class flips) or ``c10n-worst`` (the
CIFAR-10N worst human labels, ``--cifar-n``); arm ``noisy`` (the method on the noisy labels) or ``tad`` (with
TAD). Table 3's configurations run on DATM at IPC 50 under asymmetric noise: ``datm-ipc50-asym40-B`` ... ``-E``
switch TAD's parts (reverse-CE regulariser, outer loop, inner loop) as the paper's rows do; ``-A`` is the
``noisy`` cell and ``-F`` the ``tad`` cell (every part on), so those two run once. The two-stage baselines
(the paper's Table 4 protocol) run MTT at IPC 10 and 50 under symmetric noise after a label audit cleaned the
labels: ``mtt-ipc10-sym40-prune`` distils from the samples cleanlab does not flag, ``-relabel`` from all samples
with its suggested labels; cleanlab's run (``<out>/audit/<noise>-cleanlab``) comes first, once per label set.
``-tadprune`` and ``-tadrelabel`` do the same after TAD's own audit with the 20 experts of the TAD buffer
``<noise>-tad-sgd-zca`` (``<out>/audit/<noise>-tad20``, the IPC-50 cells too), which trains first, with the
SimCLR extractor, when it is not finished; that audit is the grid's own, so a ``--tag`` or ``--budget`` variant
of these cells runs once it has finished under ``--out``.
``--audit`` adds the label-audit detection table's rows (docs/label-audit.md) of the label set of each TAD buffer
of MTT's recipe with ZCA that a run trains; ``--audit-only LABEL_SET`` runs only those rows, for a noise setting or
for CIFAR-10N's aggre and random1 labels (``c10n-aggre``, ``c10n-random1``), which no cell uses.
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

Jobs run ``--jobs`` at once on each GPU of ``--gpus``, logs in ``<out>/logs/<job>.log`` (a request of one job
at ``--jobs 1`` runs it in the foreground, its output on the terminal); a failed job does not
stop the others (the exit code is 1 and its log's last lines are printed; cells whose buffer failed are not
started). At the end a table says what ran where (GPU, start, end, wall time), also written to
``<out>/logs/schedule.md`` and, with matplotlib, drawn in ``<out>/logs/schedule.png``. Each finished cell's
``result_run.json`` is copied to ``<results>/cifar10/<cell>.json`` (``<cell>-long.json`` at ``--budget long``:
runs, buffers and records of another budget than the grid's carry its name) with a ``cell`` entry added (its
method, IPC, noise, arm, switches, budget and buffer). Runs resume: re-running a cell skips its finished stages.
``--results DIR`` is the results folder (records in ``DIR/cifar10/``, the page ``DIR/README.md``): ./results by
default, the checkout's results folder for ``reproduction/reproduce_cifar10.py``. ``tad reproduce`` takes the same
options.

Pixels: if you use the JPEG-compressed CIFAR-10 copy, absolute accuracies differ a little from the
paper's official pixels; the comparison between arms on the same copy stays valid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .grid import (
    BUDGETS,
    FEATURES_BUDGET_S,
    aliases,
    budget_tag,
    buffer_command,
    buffer_of,
    cells,
    check_sets,
    command,
    grid_records,
    parse_audit_job,
    resolve_cells,
)
from .queue import queue, with_audits
from .running import job_lines, plan, recorded_time, run_cells
from .tables import page


def _jobs(text: str) -> int:
    """``--jobs``: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give the number of jobs at once per GPU, >= 1")
    return int(text)


def _seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated whole numbers >= 0, each once."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts) or len(set(map(int, parts))) != len(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct training seeds >= 0, comma-separated, e.g. 0,1,2")
    return [int(p) for p in parts]


def add_options(p: argparse.ArgumentParser) -> None:
    """The runner's options on ``p`` (the script's parser and ``tad reproduce``)."""
    p.add_argument("--list", action="store_true",
                   help="print every cell and buffer with its command; with --cell or --audit-only, the jobs they "
                        "would start (what each waits for, its command) without running anything")
    p.add_argument("--cell", action="append", metavar="CELL",
                   help="run this cell (repeatable): a name (see --list), a shell pattern ('mtt-ipc50-*') or 'all' "
                        "(the c10n-worst cells need --cifar-n)")
    p.add_argument("--jobs", type=_jobs, default=1, help="jobs run at once on each GPU")
    p.add_argument("--gpus", help="comma-separated indices of the GPUs to spread the jobs over, counted as torch "
                   "counts them (under CUDA_VISIBLE_DEVICES=2,3, 0 is GPU 2) (default: every GPU torch sees; none: "
                   "the CPU)")
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
                        "--set overrides any. Runs, buffers and records of long and full carry the budget's name "
                        "(<cell>-long), so they never mix with the grid's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, after the cell's own and the budget's; one that changes the experiment "
                        "belongs with --tag (else its record replaces the cell's); the settings the cell's name or an "
                        "option fixes (method, IPC, noise, arm, seed, dataset) are refused")
    p.add_argument("--seeds", type=_seeds, default=[0], metavar="0,1,2",
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
    p.add_argument("--audit-only", action="append", metavar="LABEL_SET",
                   help="run the label-audit detection table's rows of this label set without distilling "
                        "(repeatable): a noise setting of the grid (sym40, asym40, c10n-worst, ...) or c10n-aggre / "
                        "c10n-random1, CIFAR-10N's aggre_label / random_label1 with c10n-worst's settings (the "
                        "CIFAR-10N ones need --cifar-n); tad20 audits with the grid's buffer of MTT's recipe with ZCA "
                        "when it is trained under --out, else trains its own experts with that buffer's settings; "
                        "records as for --audit, finished ones are not run again")
    p.add_argument("--features-budget", type=float, default=FEATURES_BUDGET_S, metavar="SECONDS",
                   help="when a TAD buffer needs the default SimCLR extractor and it does not exist yet, train it "
                        "first for this long (default: the recorded 10-minute recipe)")


NOTHING_ASKED = "give --list, --cell CELL, --audit-only LABEL_SET, --queue or --page"


def asked(args: argparse.Namespace) -> bool:
    """Whether the options ``args`` ask the runner for anything (:data:`NOTHING_ASKED` says what it can do)."""
    return bool(args.list or args.cell or args.audit_only or args.page or args.queue)


#: The ``--set`` keys that change how much a job trains, which ``--list``'s estimate (the budget's sizes) ignores.
SIZE_KEYS = {"buffer.num_experts", "buffer.epochs", "distill.iterations", "distill.syn_steps", "distill.eval_every",
             "eval.num_eval", "eval.epochs"}


def interrupted_text() -> str:
    """What the runner kept when Ctrl-C stopped it (its jobs get SIGINT and keep their finished parts)."""
    return ("the jobs it started were stopped and kept what they had finished (each says what: above, or in its log "
            "under --out's logs/); the same command resumes them")


def run(args: argparse.Namespace) -> int:
    """Do what the parsed options ``args`` (:func:`add_options`) ask; the exit code: 0, or 1 if a job failed.
    Raises ValueError when they ask for nothing, :class:`~tad_plugin.files.OutputPathError` when ``--results`` (or,
    with cells to run, ``--out``) is a file."""
    from tad_plugin.files import atomic_write, output_folder

    args.kept = interrupted_text  # what `tad reproduce` says after Ctrl-C, as the script does
    records = grid_records(output_folder(args.results, "--results"))
    if not asked(args):
        raise ValueError(NOTHING_ASKED)
    if args.cell or args.audit_only:
        output_folder(args.out, "--out")
    if args.set:  # a misspelt key or a wrong type, or one the cell's name fixes: refused here, not in every run
        from ..engine.config import RunConfig, apply_overrides, from_dict

        from_dict(RunConfig, apply_overrides({}, args.set))
        check_sets(args.set)
    if args.list and (args.cell or args.audit_only):  # a dry run: what --cell / --audit-only would start
        jobs, after, _ = plan(args)
        print("\n".join(job_lines(jobs, after, args.jobs)))
        if jobs and args.seeds == [0] and BUDGETS[args.budget] is not None:
            audits: dict[str, list[str]] = {}
            for label_set, detector in filter(None, map(parse_audit_job, jobs)):  # --audit's and --audit-only's
                audits.setdefault(label_set, []).append(detector)
            took = with_audits(resolve_cells(args.cell) if args.cell else [], audits, args.budget,
                               extractor="extractor" in jobs, slots=args.jobs)
            resized = sorted({text.split("=", 1)[0] for text in args.set} & SIZE_KEYS)
            print(f"about {took / 60:.0f} min on one H100 with --jobs {args.jobs} from "
                  "nothing trained (--queue's planning figures" + (
                      f", at --budget {args.budget}'s sizes: not counting --set {', '.join(resized)})" if resized
                      else ")"))
        return 0
    if args.list:
        out, cifar_n = Path(args.out), args.cifar_n or "CIFAR-10_human.pt"
        tag = budget_tag(args.budget, args.tag)
        for cell in cells():
            cmd = command(cell, args.dataset, out, cifar_n, args.budget, args.set, tag)
            print(f"{cell}: {' '.join(cmd)}{recorded_time(cell, records)}")
        for alias, cell in aliases().items():
            print(f"{alias}: the cell {cell}")
        for buf in dict.fromkeys(buffer_of(c) for c in cells().values()):
            argv = buffer_command(buf, args.dataset, out, cifar_n, args.budget, args.set, tag)
            print(f"buffer {buf}: {' '.join(argv)}")
    code = run_cells(args) if args.cell or args.audit_only else 0
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
    """The runner's command line (``argv``, default ``sys.argv[1:]``); exits with :func:`run`'s code, or 2 after
    Ctrl-C or an error the user can fix, said in one line as ``tad reproduce`` says it (no traceback).
    ``results``: the default of ``--results`` (None: ./results)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    if results is not None:
        p.set_defaults(results=str(results))
    args = p.parse_args(argv)
    if not asked(args):
        p.error(NOTHING_ASKED)
    from tad_plugin.errors import user_error_text

    try:
        code = run(args)
    except KeyboardInterrupt:
        p.exit(2, f"\n{p.prog}: interrupted; {interrupted_text()}\n")
    except (Exception, SystemExit) as exc:  # as `tad reproduce` says them: one line, exit 2
        text = user_error_text(exc)
        if text is None:
            raise
        p.exit(2, f"{p.prog}: error: {text}\n")
    sys.exit(code)
