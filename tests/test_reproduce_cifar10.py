"""The CIFAR-10 grid runner's command line (tad_plugin.reproduce.cifar10, ``tad reproduce``, the checkout's script)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tad_plugin.reproduce import cifar10 as repro
from tad_plugin.reproduce import grid, queue, running

#: the repository's results folder and the grid's committed records in it
RESULTS_ROOT = Path(__file__).parents[1] / "results"
RESULTS = RESULTS_ROOT / "cifar10"


def test_cell_all_runs_every_cell_of_the_grid(monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_cells", lambda args: seen.update(cells=grid.resolve_cells(args.cell)) or 0)
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--cell", "all"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    assert exit_.value.code == 0 and seen["cells"] == list(grid.cells()) and len(seen["cells"]) == 138


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
    assert "138 of 138 cells left" in queue and "--cell mtt-ipc1-sym20-noisy" in queue
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # nothing written beside it
    assert main(["reproduce"]) == 2
    assert "give --list, --cell CELL, --audit-only LABEL_SET, --queue or --page" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("")
    assert main(["reproduce", "--queue", "--results", str(tmp_path / "notes.txt")]) == 2
    assert "--results " + str(tmp_path / "notes.txt") + " is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "argument --jobs: '0': give the number of jobs at once per GPU, >= 1"),
    (["--seeds", "a,b"], "argument --seeds: 'a,b': give distinct training seeds >= 0, comma-separated"),
    (["--seeds", "1,1"], "argument --seeds: '1,1': give distinct training seeds"),
    (["--set", "bufer.epochs=3"], "unknown config key 'bufer'"),
    (["--set", "buffer.epochs=x"], "buffer.epochs must be int, got 'x'"),
])
def test_runner_options_that_cannot_work_are_refused_before_any_cell(tmp_path, monkeypatch, capsys, argv, message):
    # --jobs 0 once listed "0 at a time" and failed in the scheduler; a misspelt --set key reached every cell
    from tad_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    try:
        code = main(["reproduce", "--list", "--cell", "mtt-ipc1-sym20-noisy", *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_script_reads_the_checkouts_results_from_any_folder(tmp_path):
    script = RESULTS_ROOT.parent / "reproduction" / "reproduce_cifar10.py"
    listed = subprocess.run([sys.executable, str(script), "--list"], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout
    recorded = {line.split(":")[0] for line in listed.splitlines() if "(recorded:" in line}
    assert recorded and recorded == {c for c in grid.cells() if running.recorded_time(c, RESULTS)}  # the committed ones
    assert f"--config {grid.CONFIGS / 'cifar10_sym.yaml'}" in listed and (grid.CONFIGS / "cifar10_sym.yaml").is_file()
    assert list(tmp_path.iterdir()) == []


def test_list_with_cells_shows_the_jobs_they_would_start_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(repro, "run_cells", lambda args: pytest.fail("--list must not run anything"))
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    out = tmp_path / "runs"
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--list", "--cell", "mtt-ipc10-sym40-tad",
                                            "--cell", "att-ipc1-sym40-noisy", "--out", str(out), "--jobs", "4"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    lines = capsys.readouterr().out.splitlines()
    assert exit_.value.code == 0 and not out.exists() and not (tmp_path / "features").exists()
    names = [line.split(":")[0] for line in lines if " -m tad_plugin.cli " in line]
    assert names == ["extractor", "buffer-sym40-tad-sgd-zca", "mtt-ipc10-sym40-tad (after buffer-sym40-tad-sgd-zca)",
                     "buffer-sym40-noisy-sgd-zca", "att-ipc1-sym40-noisy (after buffer-sym40-noisy-sgd-zca)"]
    assert lines[-2] == "5 job(s) to run, 4 at a time per GPU; the same command without --list runs them"
    minutes = queue.estimate(queue.batch_jobs(["mtt-ipc10-sym40-tad", "att-ipc1-sym40-noisy"]), slots=4) / 60
    assert lines[-1] == (f"about {minutes:.0f} min on one H100 with --jobs 4 from nothing trained "
                         "(--queue's planning figures)")
    monkeypatch.setattr(repro.sys, "argv", [*repro.sys.argv, "--set", "buffer.num_experts=2", "--set",
                                            "data.zca=false"])
    with pytest.raises(SystemExit):
        repro.main()
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        "planning figures, at --budget short's sizes: not counting --set buffer.num_experts)")


def test_list_with_label_audits_estimates_them_too(tmp_path, monkeypatch, capsys):
    # --list once printed no estimate when --audit or --audit-only asked for label audits
    monkeypatch.setattr(repro, "run_cells", lambda args: pytest.fail("--list must not run anything"))
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    out = ["--out", str(tmp_path / "runs"), "--jobs", "4", "--budget", "short"]

    def said(*argv):
        with pytest.raises(SystemExit) as exit_:
            repro.main(["--list", *argv, *out], results=tmp_path / "r")
        assert exit_.value.code == 0
        return capsys.readouterr().out.splitlines()[-1]

    batch = ["mtt-ipc1-asym40-tad"]
    with_rows = queue.with_audits(batch, {"asym40": ["cleanlab", "tad5", "tad20"]}, slots=4)
    assert with_rows > queue.estimate(queue.batch_jobs(batch), slots=4)
    assert said("--cell", batch[0], "--audit").startswith(f"about {with_rows / 60:.0f} min on one H100")
    alone = queue.estimate(queue.audit_batch_jobs({"sym40": ["cleanlab", "tad5", "tad20"]}), slots=4)
    assert said("--audit-only", "sym40").startswith(f"about {alone / 60:.0f} min on one H100")


@pytest.mark.parametrize("argv, message", [
    (["--page", "--results", "notes.txt"], "--results notes.txt is a file, not a folder"),
    (["--cell", "mtt-ipc1-sym20-noisy", "--out", "notes.txt"], "--out notes.txt is a file, not a folder"),
    (["--list", "--cell", "mtt-ipc1-sym20-noisy", "--set", "bufer.epochs=3"], "unknown config key 'bufer'"),
    (["--list", "--cell", "mtt-ipc1-sym20-noisy", "--set", "seed=2"], "--set seed=2: seed is set by --seeds"),
])
def test_the_script_says_a_users_mistake_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    # the script once let these through as tracebacks (tad reproduce said them in one line)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.setattr(repro, "run_cells", lambda args: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit) as exit_:
        repro.main(argv, results=tmp_path / "r")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and f"error: {message}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_ctrl_c_in_the_script_says_the_same_command_resumes(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(repro, "run", interrupted)
    with pytest.raises(SystemExit) as exit_:
        repro.main(["--queue"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().endswith(f"interrupted; {repro.interrupted_text()}")


@pytest.mark.parametrize("sets, message", [
    (["tad.enabled=false"], "--set tad.enabled=false: tad.enabled is set by the cell's arm; pick the cell"),
    (["data.noise_rate=0.2"], "data.noise_rate is set by the cell's noise"),
    (["eval.num_eval=1", "method=ftd"], "--set method=ftd: method is set by the cell's method"),
    (["seed=3"], "seed is set by --seeds; give that option instead"),
    (["data.dataset=x.npz"], "data.dataset is set by --dataset; give that option instead"),
])
def test_a_set_that_contradicts_the_cells_name_is_refused(tmp_path, monkeypatch, capsys, sets, message):
    # --cell mtt-ipc10-sym40-tad --set tad.enabled=false once recorded a run without TAD as the TAD cell
    from tad_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--list", "--cell", "mtt-ipc10-sym40-tad"] + [x for s in sets for x in ("--set", s)]
    assert main(argv) == 2  # one line, the code of a mistake the user can fix
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tad reproduce: error: ") and message in err
    assert not list(tmp_path.iterdir())
    grid.check_sets(["data.zca=false", "tad.balance_classes=false", "data.noise_seed=1"])  # variants stay free
