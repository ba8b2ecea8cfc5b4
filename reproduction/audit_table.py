"""The label-error detection table from `tad audit` runs: precision, recall and F1 of the flagged samples
against the known clean labels, the accuracy of the suggested labels on the flagged samples, and the time
each detector took, one row per run (label set x detector), as a JSON record and a Markdown table.

    python reproduction/audit_table.py runs/audit/* --out results/cifar10/audit/detection

Each argument is a `tad audit --out` folder (its `result_audit.json`); runs without clean labels are
skipped with a note. Time: the wall time of the run's training stage (`buffer`: TAD's experts; `folds`:
cleanlab's cross-validation ConvNets) plus the audit stage, as recorded by the last invocation -- a resumed
or `--buffer` run records only what it did itself, and the row says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tad_plugin.files import atomic_write, atomic_write_json

#: CIFAR-N label-set keys -> the names the papers use.
LABEL_SET_NAMES = {"worse_label": "CIFAR-10N worst", "aggre_label": "CIFAR-10N aggre",
                   "random_label1": "CIFAR-10N random1", "random_label2": "CIFAR-10N random2",
                   "random_label3": "CIFAR-10N random3", "noisy_label": "CIFAR-100N"}


def label_set(config: dict[str, Any]) -> str:
    """The label set a run audited, from its config's ``data`` section (e.g. "sym 40%", "CIFAR-10N worst")."""
    d = config["data"]
    if d.get("cifar_n"):
        return LABEL_SET_NAMES.get(d["label_set"], d["label_set"])
    if d.get("noise"):
        kind = "sym" if d["noise"] == "symmetric" else "asym"
        return f"{kind} {round(100 * d['noise_rate'])}%"
    return "as given"


def row(run: Path) -> dict[str, Any] | None:
    """One table row from ``run/result_audit.json``; None when the run has no detection metrics."""
    path = run / "result_audit.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} holds no result_audit.json: give `tad audit --out` folders")
    record = json.loads(path.read_text())
    det = record.get("results", {}).get("detection")
    if not det:
        return None
    stages = record.get("stages", {})
    training = stages.get("buffer") or stages.get("folds") or {}
    cfg = record["config"]
    detector = record.get("detector", "tad")
    budget = (f"{cfg['buffer']['num_experts']} experts x {cfg['buffer']['epochs']} ep" if detector == "tad"
              else f"{training.get('folds', '?')} folds x {cfg['buffer']['epochs']} ep")
    return {"run": str(run), "label_set": label_set(cfg), "detector": detector, "budget": budget,
            "noise_rate": det["noise_rate"], "flagged": det["flagged"], "precision": det["precision"],
            "recall": det["recall"], "f1": det["f1"], "suggested_accuracy": det["suggested_accuracy"],
            "cleaned_label_accuracy": det["cleaned_label_accuracy"],
            "seconds": round(training.get("wall_time_s", 0.0) + stages.get("audit", {}).get("wall_time_s", 0.0), 1),
            "reused_buffer": training.get("reused"), "device": record.get("device")}


def markdown(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| label set | detector | budget | wrong labels % | flagged | precision % | recall % | F1 % | "
             "suggested right % | time s | device |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in sorted(rows, key=lambda r: (r["label_set"], r["detector"], r["budget"])):
        time = f"{r['seconds']:.0f}" + (" (experts reused)" if r["reused_buffer"] else "")
        lines.append(f"| {r['label_set']} | {r['detector']} | {r['budget']} | {pct(r['noise_rate'])} | "
                     f"{r['flagged']} | "
                     f"{pct(r['precision'])} | {pct(r['recall'])} | {pct(r['f1'])} | {pct(r['suggested_accuracy'])} | "
                     f"{time} | {r['device']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="`tad audit --out` folders")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        r = row(run)
        if r is None:
            print(f"{run}: no clean labels known, left out", file=sys.stderr)
        else:
            rows.append(r)
    text = markdown(rows)
    atomic_write_json({"rows": rows}, args.out.with_suffix(".json"))
    atomic_write(args.out.with_suffix(".md"), lambda f: f.write(text.encode()))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
