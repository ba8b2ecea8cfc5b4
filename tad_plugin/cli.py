"""The ``tad`` command: expert training, distillation, evaluation, the whole pipeline, and the demo.

Sub-commands (``tad <cmd> -h`` for the flags)::

    tad buffer   train experts (noisy labels; TAD's outer loop with --tad) into OUT/buffer
    tad distill  distill a synthetic set from OUT/buffer (or --buffer DIR) into OUT/distilled.pt
    tad eval     train evaluation nets on OUT/distilled.pt (or --synthetic FILE), test on clean data
    tad run      noise -> buffer -> distill -> eval, resuming finished stages
    tad demo     noisy MTT vs MTT + TAD on scikit-learn's digits, a few minutes on a laptop CPU
    tad export   write a store's experts as upstream replay_buffer_{n}.pt files
    tad wrap     run your own MTT/FTD/DATM/ATT checkout's buffer or distill script with TAD
    tad data     pack a dataset directory into upload-sized checksummed parts, unpack them elsewhere
    tad audit    find and fix wrong labels (TAD's experts or cleanlab): tad_plugin.cli_audit
    tad reproduce  the paper's CIFAR-10 grid (cells, queue, results page): tad_plugin.reproduce.cifar10

``--method {mtt,ftd,datm,att}`` picks the distiller (``tad_plugin.adapters.<method>``).
Several GPUs: ``torchrun --nproc_per_node N --no-python tad run ...`` (or ``torchrun ... -m tad_plugin.cli
run ...``) runs buffer, distill, eval and run over N processes, one GPU each (tad_plugin.engine.distributed),
for every method; rank 0 prints and writes the records. Without torchrun everything runs in one process.

Settings, lowest precedence first: the method's defaults for the dataset and IPC, ``--config FILE.yaml``,
the dedicated flags (``--dataset``, ``--noise``, ...), then ``--set section.key=value`` (repeatable).
Every run writes ``OUT/result_<command>.json`` (command, config, seed, commit, device, wall time, results), once
every check that can refuse it has passed. A fault the user can fix prints one line and exits with 2 (``--debug``
shows its traceback); so does Ctrl-C, saying what was kept for the re-run to resume from.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_options import HelpFormatter, add_settings_options
from .runs import (
    COMMANDS,
    DEMO_CONFIG,
    QUICK_DEMO_OVERRIDES,
    TrainingData,
    config_from_args,
    method_adapter,
    prepare_data,
)

__all__ = [
    "DEMO_CONFIG",
    "QUICK_DEMO_OVERRIDES",
    "HelpFormatter",
    "TrainingData",
    "build_parser",
    "config_from_args",
    "main",
    "method_adapter",
    "prepare_data",
]  # the runs' names: re-exported from runs.py

#: ``tad run``'s description (``tad run -h``).
RUN_DESCRIPTION = """\
Noisy labels -> expert training (buffer) -> distillation -> evaluation on the clean test set, all in one run
folder (--out): labels.pt, buffer/, distill_checkpoint.pt, distilled.pt and the record result_run.json.
Running the same command again resumes: finished stages and experts are kept, distillation continues from its
checkpoint. A run whose settings do not fit the folder's earlier run is refused before it writes anything.

Settings, lowest precedence first: the method's defaults for the dataset and IPC, --config FILE.yaml, the flags
below, then --set section.key=value. The defaults shown are MTT's for the default dataset."""


def build_parser() -> argparse.ArgumentParser:
    """The ``tad`` argument parser (sub-commands and their flags)."""
    parser = argparse.ArgumentParser(prog="tad", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log hook calls and details")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error (without "
                        "it, a fault in the input, files or machine is one line)")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p = sub.add_parser("buffer", help="train experts (the trajectory buffer)")
    add_settings_options(p)
    p = sub.add_parser("distill", help="distill a synthetic set from trained experts")
    add_settings_options(p)
    p.add_argument("--buffer", metavar="DIR", help="trajectory store (default OUT/buffer)")
    p = sub.add_parser("eval", help="evaluate a distilled set on the clean test set")
    add_settings_options(p)
    p.add_argument("--synthetic", metavar="FILE", help="distilled set (default OUT/distilled.pt)")
    p.add_argument("--best", action="store_true", help="evaluate the set of the best evaluation during distillation "
                   "(kept in the distilled file, as upstream MTT's images_best.pt) instead of the final images")
    p = sub.add_parser("run", help="the whole pipeline: noise -> buffer -> distill -> eval",
                       description=RUN_DESCRIPTION, formatter_class=HelpFormatter)
    add_settings_options(p)
    p.add_argument("--buffer", metavar="DIR", help="reuse the experts in DIR (another run's buffer with the same "
                   "labels and TAD arm, e.g. MTT's for ATT) instead of training OUT/buffer")
    p = sub.add_parser("demo", help="noisy MTT vs MTT + TAD on digits (CPU, minutes)")
    add_settings_options(p, DEMO_CONFIG)
    p.add_argument("--quick", action="store_true", help="a reduced demo (seconds; used by the tests)")
    p = sub.add_parser("export", help="write experts as upstream replay_buffer_{n}.pt files")
    p.add_argument("--buffer", required=True, metavar="DIR", help="trajectory store")
    p.add_argument("--to", required=True, metavar="DIR", help="output folder")
    p.add_argument("--per-file", type=int, default=10, help="trajectories per file (upstream: 10)")
    p = sub.add_parser("plot", help="draw a finished run's figures again (e.g. on a machine with matplotlib)")
    p.add_argument("run", metavar="RUN", help="a run's --out folder (holding distilled.pt, buffer/trust_report.json)")

    from .features.cli import add_subcommands

    add_subcommands(sub)  # `tad features train | embed`
    from .upstream.cli import add_subcommand

    add_subcommand(sub)  # `tad wrap {mtt,ftd,datm,att} --repo PATH -- SCRIPT ...`
    from .packing import add_subcommand as add_data_subcommand

    add_data_subcommand(sub)  # `tad data pack SRC OUT_DIR | unpack MANIFEST OUT.npz`
    from .cli_audit import add_subcommand as add_audit

    add_audit(sub)  # `tad audit`
    from .reproduce.cifar10 import add_subcommand as add_reproduce

    add_reproduce(sub)  # `tad reproduce --cell CELL | --list | --queue | --page`
    return parser


def kept_text(folders: Sequence[Path]) -> str:
    """What an interrupted run leaves to resume from in its run ``folders``, and how to resume."""
    kept = []
    for folder in folders:
        parts = []
        experts = folder / "buffer" / "experts"
        done = len(list(experts.glob("expert_*.pt"))) if experts.is_dir() else 0
        if done:
            parts.append(f"{done} finished expert(s) in buffer/")
        folds = len(list(folder.glob("folds/fold*/experts/expert_*.pt")))  # tad audit --detector cleanlab
        if folds:
            parts.append(f"{folds} finished fold model(s) in folds/")
        parts += [what for name, what in (("distill_checkpoint.pt", "the distillation checkpoint"),
                                          ("distilled.pt", "the distilled set")) if (folder / name).is_file()]
        parts += [p.name for p in sorted(folder.glob("result_*.json"))]
        if parts:
            kept.append(f"{folder}: {', '.join(parts)}")
    if not kept:
        return "it had written nothing yet; run the command again to start it"
    return (f"kept {'; '.join(kept)}; the same command resumes from them (an expert or evaluation in progress "
            f"starts over)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tad`` console script; returns the exit code: 0, 2 for an error the user can fix
    (one line on stderr: a :class:`~tad_plugin.errors.TADError`, a bad value, a missing file, a full or read-only
    disk, GPU memory, no C++ compiler for ``torch.compile``, a command's ``SystemExit("message")``), 2 after
    Ctrl-C too (saying what was kept); ``--debug`` shows tracebacks instead. Other exceptions are programming
    errors and keep their traceback."""
    from .engine.distributed import launched_rank, shutdown
    from .errors import user_error_text

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "func", None) or COMMANDS[args.command]
    args.started = []  # the run folders written into (see runs.begin)
    args.kept = None  # or what a command kept for a re-run, said after Ctrl-C instead of kept_text(args.started)
    try:
        with contextlib.ExitStack() as stack:
            args.stack = stack  # what a command sets until it ends (the CPU threads)
            if launched_rank():  # under torchrun only rank 0 prints
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return int(handler(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        kept = args.kept() if args.kept is not None else kept_text(args.started)
        print(f"\ntad {args.command}: interrupted; {kept}", file=sys.stderr)
        return 2  # as any fault the user can act on (pytest does the same)
    except (Exception, SystemExit) as exc:  # a fault the user can fix: one line; anything else keeps its traceback
        text = user_error_text(exc)
        if args.debug or text is None:
            raise
        print(f"tad {args.command}: error: {text}", file=sys.stderr)
        return 2
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
