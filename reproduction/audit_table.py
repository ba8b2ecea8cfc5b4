"""The label-error detection table from `tad audit` runs: precision, recall and F1 of the flagged samples
against the known clean labels, the accuracy of the suggested labels on the flagged samples, and the time
each detector took, one row per run (label set x detector), as a JSON record and a Markdown table.

    python reproduction/audit_table.py runs/audit/* --out results/cifar10/audit/detection

Each argument is a `tad audit --out` folder (its `result_audit.json`); runs without clean labels are
skipped with a note. Time: the wall time of the run's training stage (`buffer`: TAD's experts; `folds`:
cleanlab's cross-validation ConvNets) plus the audit stage, as recorded by the last invocation -- a resumed
or `--buffer` run records only what it did itself, and the row says so. The table is built by
tad_plugin.engine.audit.write_detection_table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tad_plugin.engine.audit import detection_markdown, write_detection_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="`tad audit --out` folders")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    rows, skipped = write_detection_table(args.runs, args.out)
    for run in skipped:
        print(f"{run}: no clean labels known, left out", file=sys.stderr)
    print(detection_markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
