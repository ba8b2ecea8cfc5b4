"""The CIFAR-10 grid runner's command line (tad_plugin.reproduce.cifar10, ``tad reproduce``, the checkout's script)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tad_plugin.reproduce import cifar10 as repro
from tad_plugin.reproduce import grid, running

#: the repository's results folder and the grid's committed records in it
RESULTS_ROOT = Path(__file__).parents[1] / "results"
RESULTS = RESULTS_ROOT / "cifar10"


def test_cell_all_runs_every_cell_of_the_grid(monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_cells", lambda args: seen.update(cells=grid.resolve_cells(args.cell)) or 0)
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--cell", "all"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    assert exit_.value.code == 0 and seen["cells"] == list(grid.cells()) and len(seen["cells"]) == 130


def test_audit_only_alone_runs_the_audits(monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_cells", lambda args: seen.update(audits=args.audit_only, cells=args.cell) or 0)
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--audit-only", "c10n-aggre", "--audit-only",
                                            "c10n-random1"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    assert exit_.value.code == 0 and seen == {"audits": ["c10n-aggre", "c10n-random1"], "cells": None}


def test_tad_reproduce_writes_the_queue_under_its_results_folder(tmp_path, monkeypatch, capsys):
    from tad_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--queue", "--results", str(tmp_path / "mine")]) == 0
    queue = (tmp_path / "mine" / "cifar10" / "QUEUE.md").read_text()
    assert "130 of 130 cells left" in queue and "--cell mtt-ipc1-sym20-noisy" in queue
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # nothing written beside it
    assert main(["reproduce"]) == 2
    assert "give --list, --cell CELL, --audit-only LABEL_SET, --queue or --page" in capsys.readouterr().err


def test_the_script_reads_the_checkouts_results_from_any_folder(tmp_path):
    script = RESULTS_ROOT.parent / "reproduction" / "reproduce_cifar10.py"
    listed = subprocess.run([sys.executable, str(script), "--list"], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout
    recorded = {line.split(":")[0] for line in listed.splitlines() if "(recorded:" in line}
    assert recorded and recorded == {c for c in grid.cells() if running.recorded_time(c, RESULTS)}  # the committed ones
    assert f"--config {grid.CONFIGS / 'cifar10_sym.yaml'}" in listed and (grid.CONFIGS / "cifar10_sym.yaml").is_file()
    assert list(tmp_path.iterdir()) == []
