"""Running the CIFAR-10 grid (tad_plugin.reproduce.running): the plan of a request (extractor, buffers, audits,
cells and what each waits for), the parallel jobs, and the collection of finished cells and audits; a shrunk cell
and its audits end to end through the real commands."""

import argparse
import dataclasses
import json
import os
import sys

import pytest
import torch

from tad_plugin.cli import build_parser, config_from_args
from tad_plugin.reproduce import grid, running, tables


def config_of(cmd):
    return config_from_args(build_parser().parse_args(cmd[3:]))


def cmd_value(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def _args(tmp_path, cells, **kw):
    base = dict(cell=cells, set=[], dataset="d.npz", out=str(tmp_path), cifar_n="h.pt", jobs=1, gpus=None,
                budget="short", tag=None, seeds=[0], features_budget=12.0, audit=False, audit_only=None,
                results=str(tmp_path / "r"))
    return argparse.Namespace(**{**base, **kw})


def _inputs_here(tmp_path, monkeypatch):
    """The default ``--dataset`` and ``--cifar-n`` of :func:`_args` as files in the working directory: run_cells
    refuses to start jobs on files that do not exist."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.npz").write_bytes(b"")
    (tmp_path / "h.pt").write_bytes(b"")


def test_a_buffer_trains_once_and_its_cells_follow_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    jobs, after, meta = running.plan(_args(tmp_path, ["mtt-ipc1-sym40-noisy", "att-ipc10-sym40-noisy",
                                                    "att-ipc50-sym40-noisy", "mtt-ipc50-sym40-tad",
                                                    "ftd-ipc50-sym40-noisy"]))
    # the extractor (missing) first; each buffer is followed by its cells; the cells wait for their buffer only
    assert list(jobs) == ["extractor", "buffer-sym40-noisy-sgd-zca", "mtt-ipc1-sym40-noisy", "att-ipc10-sym40-noisy",
                          "buffer-sym40-tad-sgd-raw", "mtt-ipc50-sym40-tad", "buffer-sym40-noisy-gsam-a1-raw",
                          "ftd-ipc50-sym40-noisy", "buffer-sym40-noisy-sgd-raw", "att-ipc50-sym40-noisy"]
    assert after == {"mtt-ipc1-sym40-noisy": ["buffer-sym40-noisy-sgd-zca"],
                     "att-ipc10-sym40-noisy": ["buffer-sym40-noisy-sgd-zca"],
                     "att-ipc50-sym40-noisy": ["buffer-sym40-noisy-sgd-raw"],
                     "mtt-ipc50-sym40-tad": ["buffer-sym40-tad-sgd-raw"],
                     "ftd-ipc50-sym40-noisy": ["buffer-sym40-noisy-gsam-a1-raw"]}
    assert jobs["extractor"][3:6] == ["features", "train", "--dataset"]
    # the TAD buffer starts beside the extractor and waits for its file up to the extractor's budget + margin
    assert config_of(jobs["buffer-sym40-tad-sgd-raw"]).tad.features_wait_s == 12.0 + running.FEATURES_MARGIN_S
    assert config_of(jobs["buffer-sym40-noisy-sgd-raw"]).tad.features_wait_s == 0  # a noisy buffer: no inner loop
    assert config_of(jobs["buffer-sym40-noisy-sgd-zca"]).buffer.epochs == 23  # IPC 1 and 10 read 23 epochs
    assert config_of(jobs["buffer-sym40-noisy-sgd-raw"]).buffer.epochs == 43
    assert meta["att-ipc50-sym40-noisy"] == (grid.cells()["att-ipc50-sym40-noisy"], "sym40-noisy-sgd-raw", "short")
    # an extractor in place, and a finished buffer under --out: neither is trained again, nothing waits
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "d.pt").write_bytes(b"x")
    monkeypatch.setattr(running, "buffer_ready",
                        lambda path, experts: "sym40-noisy-sgd-zca" in str(path) and experts == 20)
    jobs, after, _ = running.plan(_args(tmp_path, ["mtt-ipc1-sym40-noisy", "mtt-ipc50-sym40-tad"]))
    assert list(jobs) == ["buffer-sym40-tad-sgd-raw", "mtt-ipc50-sym40-tad", "mtt-ipc1-sym40-noisy"]
    assert after == {"mtt-ipc50-sym40-tad": ["buffer-sym40-tad-sgd-raw"]}
    assert config_of(jobs["buffer-sym40-tad-sgd-raw"]).tad.features_wait_s == 0  # the extractor exists
    # a buffer is finished when it holds the experts --set asks for
    monkeypatch.setattr(running, "buffer_ready", lambda path, experts: experts == 2)
    assert list(running.plan(_args(tmp_path, ["mtt-ipc1-sym40-noisy"], set=["buffer.num_experts=2"]))[0]) == [
        "mtt-ipc1-sym40-noisy"]


def test_only_buffers_with_the_inner_loop_wait_for_the_extractor(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    jobs, after, _ = running.plan(_args(tmp_path, ["datm-ipc50-asym40-C", "datm-ipc50-asym40-E"]))
    assert "extractor" in jobs and not any("extractor" in deps for deps in after.values())
    assert config_of(jobs["buffer-asym40-E-gsam-a0.3-zca"]).tad.features_wait_s == 312.0
    assert config_of(jobs["buffer-asym40-C-gsam-a0.3-zca"]).tad.features_wait_s == 0  # C: no inner loop
    jobs, after, _ = running.plan(_args(tmp_path, ["datm-ipc50-asym40-C", "mtt-ipc10-sym20-noisy"]))
    assert "extractor" not in jobs  # nothing needs it
    jobs, _, _ = running.plan(_args(tmp_path, ["mtt-ipc10-sym20-tad"], set=["tad.inner_loop=false"]))
    assert "extractor" not in jobs
    # the user's own wait wins, once
    jobs, _, _ = running.plan(_args(tmp_path, ["mtt-ipc10-sym20-tad"], set=["tad.features_wait_s=900"]))
    cmd = jobs["buffer-sym20-tad-sgd-zca"]
    assert config_of(cmd).tad.features_wait_s == 900 and cmd.count("tad.features_wait_s=900") == 1


def test_the_tad_buffers_run_beside_the_extractor_and_the_cells_after_their_buffers(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    jobs, after, _ = running.plan(_args(tmp_path, ["mtt-ipc10-sym40-noisy", "mtt-ipc10-sym40-tad"]))
    assert list(jobs) == ["extractor", "buffer-sym40-noisy-sgd-zca", "mtt-ipc10-sym40-noisy",
                          "buffer-sym40-tad-sgd-zca", "mtt-ipc10-sym40-tad"]
    fake = {name: _job(tmp_path, name, seconds=0.6 if name == "extractor" or name.startswith("buffer-") else 0.0)
            for name in jobs}
    codes = running.run_parallel(fake, tmp_path / "logs", slots=3, gpus=["0"], poll_s=0.05, after=after)
    assert set(codes.values()) == {0}
    t = {name: _times(tmp_path, name) for name in jobs}
    assert t["buffer-sym40-tad-sgd-zca"][0] < t["extractor"][1]  # started while the extractor trained
    assert t["buffer-sym40-noisy-sgd-zca"][0] < t["extractor"][1]
    for arm in ("noisy", "tad"):
        assert t[f"mtt-ipc10-sym40-{arm}"][0] >= t[f"buffer-sym40-{arm}-sgd-zca"][1]  # each cell after its buffer


def test_the_extractor_is_trained_only_when_a_tad_buffer_needs_the_missing_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    default = tmp_path / "features" / "cifar10.pt"
    assert running.extractor_to_train(["sym40-noisy-sgd-zca", "att-ipc10-sym40-noisy"], "/data/cifar10.npz", []) is None
    assert running.extractor_to_train(["sym40-noisy-sgd-zca", "sym40-tad-sgd-raw"], "/data/cifar10.npz", []) == default
    assert running.extractor_to_train(["mtt-ipc10-sym40-tad"], "cifar10", ["tad.features=pixels"]) is None
    assert running.extractor_to_train(["mtt-ipc10-sym40-tad"], "cifar10", ["tad.features=null"]) == default
    mine = tmp_path / "mine.pt"
    with pytest.raises(SystemExit, match=r"tad.features=.*mine.pt: no such extractor file.*--out .*mine.pt"):
        running.extractor_to_train(["mtt-ipc10-sym40-tad"], "cifar10", [f"tad.features={mine}"])
    mine.write_bytes(b"x")
    assert running.extractor_to_train(["mtt-ipc10-sym40-tad"], "cifar10", [f"tad.features={mine}"]) is None
    default.parent.mkdir()
    default.write_bytes(b"x")
    assert running.extractor_to_train(["mtt-ipc10-sym40-tad"], "cifar10", []) is None
    (tmp_path / "features" / "cifar10.state.pt").write_bytes(b"x")
    assert running.extractor_command(default, "cifar10", 5.0)[-1] == "--resume"  # an interrupted run resumes


def test_tagged_variants_and_more_seeds_get_their_own_buffers_runs_and_records(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path))
    (tmp_path / "d.pt").write_bytes(b"x")
    jobs, after, meta = running.plan(_args(tmp_path, ["att-ipc10-sym40-tad"], tag="bal", seeds=[0, 2],
                                         set=["tad.balance_classes=true"]))
    assert list(jobs) == ["buffer-sym40-tad-sgd-zca-bal", "att-ipc10-sym40-tad-bal",
                          "buffer-sym40-tad-sgd-zca-bal-seed2", "att-ipc10-sym40-tad-bal-seed2"]
    cell = jobs["att-ipc10-sym40-tad-bal-seed2"]
    assert cell[cell.index("--buffer") + 1] == str(tmp_path / "buffers" / "sym40-tad-sgd-zca-bal-seed2" / "buffer")
    assert cell[-4:] == ["--set", "tad.balance_classes=true", "--set", "seed=2"]
    cfg = config_of(jobs["buffer-sym40-tad-sgd-zca-bal-seed2"])
    assert cfg.seed == 2 and cfg.data.noise_seed == 0 and cfg.tad.balance_classes  # same labels, other training seed
    assert meta["att-ipc10-sym40-tad-bal"][1] == "sym40-tad-sgd-zca-bal"
    with pytest.raises(SystemExit, match="--tag"):
        running.plan(_args(tmp_path, ["att-ipc10-sym40-tad"], tag="../x"))
    # another budget than the grid's: its own buffers, runs and records, never the short budget's
    jobs, after, meta = running.plan(_args(tmp_path, ["mtt-ipc10-sym40-tad"], budget="long"))
    assert list(jobs) == ["buffer-sym40-tad-sgd-zca-long", "mtt-ipc10-sym40-tad-long"]
    assert config_of(jobs["buffer-sym40-tad-sgd-zca-long"]).buffer.num_experts == 100
    assert meta["mtt-ipc10-sym40-tad-long"][1:] == ("sym40-tad-sgd-zca-long", "long")
    jobs, _, _ = running.plan(_args(tmp_path, ["mtt-ipc10-sym40-tad"], budget="long", tag="bal"))
    assert list(jobs) == ["buffer-sym40-tad-sgd-zca-long-bal", "mtt-ipc10-sym40-tad-long-bal"]
    with pytest.raises(SystemExit, match="--seeds"):
        running.plan(_args(tmp_path, ["att-ipc10-sym40-tad"], seeds=[-1]))


def test_audit_runs_the_detection_rows_beside_the_tad_buffers_of_mtts_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    cells = ["mtt-ipc10-sym40-tad", "mtt-ipc10-sym40-noisy", "mtt-ipc50-sym40-tad"]
    jobs, after, _ = running.plan(_args(tmp_path, cells, audit=True))
    audits = [j for j in jobs if j.startswith("audit-")]
    # not for the raw IPC-50 one; cleanlab first (it needs neither the extractor nor the buffer)
    assert audits == ["audit-sym40-cleanlab", "audit-sym40-tad5", "audit-sym40-tad20"]
    cl, tad5, tad20 = (config_of(jobs[a]) for a in audits)
    assert all(jobs[a][3] == "audit" for a in audits)
    assert [jobs[a][jobs[a].index("--out") + 1] for a in audits] == [
        str(tmp_path / "audit" / n) for n in ("sym40-cleanlab", "sym40-tad5", "sym40-tad20")]
    # TAD's 20 experts: the grid buffer's, once it is trained; the same labels and settings as that buffer
    cmd = jobs["audit-sym40-tad20"]
    assert cmd[cmd.index("--buffer") + 1] == str(tmp_path / "buffers" / "sym40-tad-sgd-zca" / "buffer")
    assert after["audit-sym40-tad20"] == ["buffer-sym40-tad-sgd-zca"]
    buf = config_of(jobs["buffer-sym40-tad-sgd-zca"])
    assert tad20.data == buf.data and tad20.buffer == buf.buffer and tad20.tad.enabled
    # 5 TAD experts of their own (cleanlab's model count), beside the extractor; cleanlab on the same labels
    assert (tad5.buffer.num_experts, tad5.buffer.experts_per_group, tad5.buffer.epochs) == (5, 5, 23)
    assert tad5.tad.features_wait_s == buf.tad.features_wait_s > 0 and "audit-sym40-tad5" not in after
    assert cmd_value(jobs["audit-sym40-cleanlab"], "--detector") == "cleanlab"
    assert cl.data == buf.data and cl.buffer.epochs == 23
    # an audit already recorded is not run again; --audit belongs to the cells' own runs
    done = tmp_path / "r" / "cifar10" / "audit" / "sym40-cleanlab"
    done.mkdir(parents=True)
    (done / "result_audit.json").write_text("{}")
    jobs, _, _ = running.plan(_args(tmp_path, cells, audit=True))
    assert "audit-sym40-cleanlab" not in jobs and "audit-sym40-tad5" in jobs
    assert not any(j.startswith("audit-") for j in running.plan(_args(tmp_path, cells))[0])
    with pytest.raises(SystemExit, match="--audit and --audit-only .* at its short budget: drop --tag, --seeds and "
                                         "--budget"):
        running.plan(_args(tmp_path, cells, audit=True, tag="x"))
    with pytest.raises(SystemExit, match="drop --tag, --seeds and --budget"):
        running.plan(_args(tmp_path, cells, audit=True, budget="long"))


def test_audit_only_runs_the_detection_rows_of_a_label_set_no_cell_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    jobs, after, meta = running.plan(_args(tmp_path, None, audit_only=["c10n-aggre", "c10n-random1"]))
    # the extractor (missing) beside them; cleanlab's first: they need neither it nor a buffer
    assert list(jobs) == ["extractor", "audit-c10n-aggre-cleanlab", "audit-c10n-random1-cleanlab",
                          "audit-c10n-aggre-tad5", "audit-c10n-random1-tad5", "audit-c10n-aggre-tad20",
                          "audit-c10n-random1-tad20"]
    assert after == {} and meta == {}
    assert all(jobs[j][3] == "audit" and "--buffer" not in jobs[j] for j in jobs if j != "extractor")
    # tad20 trains its own 20 experts with the settings of the grid's c10n-worst TAD buffer of MTT's recipe with
    # ZCA, on the other label column of the same label file
    worst = config_of(grid.buffer_command("c10n-worst-tad-sgd-zca", "d.npz", tmp_path, "h.pt", "short"))
    tad20 = config_of(jobs["audit-c10n-aggre-tad20"])
    assert (tad20.data.cifar_n, tad20.data.label_set, worst.data.label_set) == ("h.pt", "aggre_label", "worse_label")
    assert dataclasses.replace(tad20.data, label_set="worse_label") == worst.data
    assert tad20.buffer == worst.buffer and (tad20.buffer.num_experts, tad20.buffer.epochs) == (20, 23)
    assert tad20.tad.enabled and tad20.tad.features_wait_s == 12.0 + running.FEATURES_MARGIN_S
    assert cmd_value(jobs["audit-c10n-aggre-tad20"], "--out") == str(tmp_path / "audit" / "c10n-aggre-tad20")
    tad5, cl = (config_of(jobs[f"audit-c10n-random1-{d}"]) for d in ("tad5", "cleanlab"))
    assert tad5.data.label_set == cl.data.label_set == "random_label1"
    assert (tad5.buffer.num_experts, tad5.buffer.experts_per_group, tad5.tad.features_wait_s) == (5, 5, 312.0)
    assert cmd_value(jobs["audit-c10n-random1-cleanlab"], "--detector") == "cleanlab" and cl.tad.features_wait_s == 0
    # the extractor in place and a row recorded: neither runs again
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "d.pt").write_bytes(b"x")
    done = tmp_path / "r" / "cifar10" / "audit" / "c10n-aggre-tad5"
    done.mkdir(parents=True)
    (done / "result_audit.json").write_text("{}")
    jobs, _, _ = running.plan(_args(tmp_path, None, audit_only=["c10n-aggre"]))
    assert list(jobs) == ["audit-c10n-aggre-cleanlab", "audit-c10n-aggre-tad20"]
    assert config_of(jobs["audit-c10n-aggre-tad20"]).tad.features_wait_s == 0
    with pytest.raises(SystemExit, match=r"--audit-only c10n-aggre: CIFAR-10N's labels need --cifar-n PATH"):
        running.plan(_args(tmp_path, None, audit_only=["c10n-aggre"], cifar_n=None))
    with pytest.raises(SystemExit, match=r"--audit-only aggre: no such label set \(one of sym20, .*c10n-worst, "
                                         r"c10n-aggre, c10n-random1\)"):
        running.plan(_args(tmp_path, None, audit_only=["aggre"]))
    with pytest.raises(SystemExit, match="drop --tag, --seeds and --budget"):
        running.plan(_args(tmp_path, None, audit_only=["c10n-random1"], seeds=[0, 1]))


def test_audit_only_on_a_grid_label_set_reads_its_buffer_where_there_is_one(tmp_path, monkeypatch):
    (tmp_path / "d.pt").write_bytes(b"x")  # the extractor in place: nothing waits for it
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path))
    experts = str(tmp_path / "buffers" / "sym40-tad-sgd-zca" / "buffer")
    # no buffer under --out: tad20 trains its 20 experts as the grid's buffer would
    jobs, after, _ = running.plan(_args(tmp_path, None, audit_only=["sym40"]))
    assert list(jobs) == ["audit-sym40-cleanlab", "audit-sym40-tad5", "audit-sym40-tad20"] and after == {}
    own = config_of(jobs["audit-sym40-tad20"])
    assert "--buffer" not in jobs["audit-sym40-tad20"] and own.tad.features_wait_s == 0
    assert own.buffer == config_of(grid.buffer_command("sym40-tad-sgd-zca", "d.npz", tmp_path, "h.pt", "short")).buffer
    # its buffer trained under --out: tad20 audits with those experts
    monkeypatch.setattr(running, "buffer_ready", lambda path, n: str(path) == experts and n == 20)
    jobs, after, _ = running.plan(_args(tmp_path, None, audit_only=["sym40"]))
    assert cmd_value(jobs["audit-sym40-tad20"], "--buffer") == experts and after == {}
    # the buffer trained by the same run (a cell reads it): tad20 waits for it; --audit adds nothing twice
    monkeypatch.setattr(running, "buffer_ready", lambda path, n: False)
    jobs, after, _ = running.plan(_args(tmp_path, ["mtt-ipc10-sym40-tad"], audit=True, audit_only=["sym40"]))
    assert [j for j in jobs if j.startswith("audit-")] == ["audit-sym40-cleanlab", "audit-sym40-tad5",
                                                          "audit-sym40-tad20"]
    assert cmd_value(jobs["audit-sym40-tad20"], "--buffer") == experts
    assert after["audit-sym40-tad20"] == ["buffer-sym40-tad-sgd-zca"]


def test_the_two_stage_buffers_wait_for_cleanlabs_first_stage_once_per_label_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    cells = ["mtt-ipc10-sym40-prune", "mtt-ipc10-sym40-relabel", "mtt-ipc50-sym40-prune"]
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert list(jobs) == ["audit-sym40-cleanlab", "buffer-sym40-prune-sgd-zca", "mtt-ipc10-sym40-prune",
                          "buffer-sym40-relabel-sgd-zca", "mtt-ipc10-sym40-relabel", "buffer-sym40-prune-sgd-raw",
                          "mtt-ipc50-sym40-prune"]  # no extractor: TAD is off in all of them
    assert after["buffer-sym40-prune-sgd-raw"] == after["buffer-sym40-relabel-sgd-zca"] == ["audit-sym40-cleanlab"]
    first = jobs["audit-sym40-cleanlab"]
    assert first == grid.audit_commands("sym40", "d.npz", tmp_path, "h.pt", "short")[
        "audit-sym40-cleanlab"]  # the same run as --audit's cleanlab row
    assert first[-3:] == ["--detector", "cleanlab", "--write-pruned"] and config_of(first).buffer.epochs == 23
    assert config_of(first).data.noise_rate == 0.4 and not config_of(jobs["buffer-sym40-prune-sgd-zca"]).tad.enabled
    # its output in place and its record finished: the buffers start at once
    done = tmp_path / "audit" / "sym40-cleanlab"
    (done / "pruned").mkdir(parents=True)
    (done / "pruned" / "d.npz").write_bytes(b"x")
    (done / "labels_cleaned.npz").write_bytes(b"x")
    (done / "result_audit.json").write_text(json.dumps({"stages": {"folds": {}, "audit": {}}}))
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert "audit-sym40-cleanlab" not in jobs and not any(j.startswith("buffer-") for j in after)
    # interrupted before its last stage, or the pruned dataset the prune cells read is missing: it runs again
    (done / "result_audit.json").write_text(json.dumps({"stages": {"folds": {}}}))
    assert "audit-sym40-cleanlab" in running.plan(_args(tmp_path, cells))[0]
    (done / "result_audit.json").write_text(json.dumps({"stages": {"folds": {}, "audit": {}}}))
    (done / "pruned" / "d.npz").unlink()
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert list(jobs)[0] == "audit-sym40-cleanlab"
    # the buffers already trained: the two-stage cells themselves wait for the first stage
    monkeypatch.setattr(running, "buffer_ready", lambda path, experts: True)
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert list(jobs) == ["audit-sym40-cleanlab", *cells]
    assert after == {cell: ["audit-sym40-cleanlab"] for cell in cells}


def test_the_tad_audit_arms_train_the_tad_buffer_then_its_audit_then_their_buffers(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    cells = ["mtt-ipc10-sym40-tadprune", "mtt-ipc10-sym40-tadrelabel", "mtt-ipc50-sym40-tadprune"]
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    # extractor and TAD buffer -> TAD's audit with its 20 experts -> the two-stage buffers -> the cells
    assert list(jobs) == ["extractor", "buffer-sym40-tad-sgd-zca", "audit-sym40-tad20",
                          "buffer-sym40-tadprune-sgd-zca", "mtt-ipc10-sym40-tadprune",
                          "buffer-sym40-tadrelabel-sgd-zca", "mtt-ipc10-sym40-tadrelabel",
                          "buffer-sym40-tadprune-sgd-raw", "mtt-ipc50-sym40-tadprune"]
    assert after == {"audit-sym40-tad20": ["buffer-sym40-tad-sgd-zca"],
                     **{f"buffer-sym40-{b}": ["audit-sym40-tad20"]
                        for b in ("tadprune-sgd-zca", "tadrelabel-sgd-zca", "tadprune-sgd-raw")},
                     **{c: [f"buffer-{grid.buffer_of(grid.cells()[c])}"] for c in cells}}
    experts = tmp_path / "buffers" / "sym40-tad-sgd-zca" / "buffer"
    stage = jobs["audit-sym40-tad20"]
    assert stage[3] == "audit" and cmd_value(stage, "--buffer") == str(experts) and stage[-1] == "--write-pruned"
    assert cmd_value(stage, "--out") == str(tmp_path / "audit" / "sym40-tad20")
    assert config_of(jobs["buffer-sym40-tad-sgd-zca"]).tad.features_wait_s == 12.0 + running.FEATURES_MARGIN_S
    assert not config_of(jobs["buffer-sym40-tadprune-sgd-raw"]).tad.enabled  # stage two: plain MTT
    # --audit beside the TAD cell asks for the same tad20 run: one job, the first stage's
    both, both_after, _ = running.plan(_args(tmp_path, ["mtt-ipc10-sym40-tad", *cells], audit=True))
    assert [j for j in both if j.startswith(("audit-", "buffer-sym40-tad-"))] == [
        "buffer-sym40-tad-sgd-zca", "audit-sym40-tad20", "audit-sym40-cleanlab", "audit-sym40-tad5"]
    assert both["audit-sym40-tad20"] == stage and both_after["audit-sym40-tad20"] == ["buffer-sym40-tad-sgd-zca"]
    assert list(both).index("mtt-ipc10-sym40-tad") < list(both).index("audit-sym40-tad20")
    # --audit with the TAD-audit arms alone: the TAD buffer they train for their first stage has its rows too
    alone = running.plan(_args(tmp_path, cells, audit=True))[0]
    assert [j for j in alone if j.startswith("audit-")] == ["audit-sym40-tad20", "audit-sym40-cleanlab",
                                                              "audit-sym40-tad5"]
    # the TAD buffer finished under --out: the audit starts at once, reading it
    monkeypatch.setattr(running, "buffer_ready", lambda path, n: path == experts)
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert list(jobs)[0] == "audit-sym40-tad20" and "audit-sym40-tad20" not in after
    assert "extractor" not in jobs  # its experts are trained; stage two has no inner loop
    assert cmd_value(jobs["audit-sym40-tad20"], "--buffer") == str(experts)
    # a finished audit without the pruned dataset is not a first stage; with it, it is not run again
    done = tmp_path / "audit" / "sym40-tad20"
    done.mkdir(parents=True)
    (done / "result_audit.json").write_text(json.dumps({"stages": {"buffer": {}, "audit": {}}}))
    (done / "labels_cleaned.npz").write_bytes(b"x")
    assert "audit-sym40-tad20" in running.plan(_args(tmp_path, cells))[0]
    (done / "pruned").mkdir()
    (done / "pruned" / "d.npz").write_bytes(b"x")
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert list(jobs) == ["buffer-sym40-tadprune-sgd-zca", "mtt-ipc10-sym40-tadprune",
                          "buffer-sym40-tadrelabel-sgd-zca", "mtt-ipc10-sym40-tadrelabel",
                          "buffer-sym40-tadprune-sgd-raw", "mtt-ipc50-sym40-tadprune"]
    assert not any(deps == ["audit-sym40-tad20"] for deps in after.values())
    # a variant reuses the finished first stage; one that would have to make it is refused
    assert "audit-sym40-tad20" not in running.plan(_args(tmp_path, cells, tag="v2"))[0]
    (done / "pruned" / "d.npz").unlink()
    with pytest.raises(SystemExit, match="run it first without --tag and --budget"):
        running.plan(_args(tmp_path, cells, tag="v2"))
    with pytest.raises(SystemExit, match="audit-sym40-tad20"):
        running.plan(_args(tmp_path, cells, budget="long"))


def audit_record(f1, detector):
    """A finished ``tad audit`` record of sym40 (the fields the detection table reads)."""
    return {"detector": detector, "device": "gpu",
            "config": {"data": {"noise": "symmetric", "noise_rate": 0.4}, "buffer": {"num_experts": 20, "epochs": 23}},
            "stages": {"buffer": {"wall_time_s": 100.0}, "audit": {"wall_time_s": 5.0}},
            "results": {"detection": {"noise_rate": 0.4, "flagged": 100, "precision": 0.9, "recall": 0.8,
                                      "f1": f1, "suggested_accuracy": 0.7, "cleaned_label_accuracy": 0.9}}}


def test_an_audit_finished_under_out_is_recorded_not_run_again(tmp_path, monkeypatch):
    _inputs_here(tmp_path, monkeypatch)
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    done = tmp_path / "audit" / "sym40-cleanlab"  # finished under --out, but never copied to the records
    done.mkdir(parents=True)
    (done / "result_audit.json").write_text(json.dumps(audit_record(0.8, "cleanlab")))
    half = tmp_path / "audit" / "sym40-tad5"  # interrupted: no audit stage yet
    half.mkdir(parents=True)
    (half / "result_audit.json").write_text(json.dumps({**audit_record(0.7, "tad"), "stages": {}}))
    args = _args(tmp_path, ["mtt-ipc10-sym40-tad"], audit=True)
    jobs, _, _ = running.plan(args)
    assert "audit-sym40-cleanlab" not in jobs and {"audit-sym40-tad5", "audit-sym40-tad20"} <= set(jobs)
    seen = {}
    monkeypatch.setattr(running, "run_parallel", lambda jobs, *a, **k: seen.update(jobs=jobs) or {j: 0 for j in jobs})
    monkeypatch.setattr(running, "gpu_ids", lambda spec: [])
    monkeypatch.setattr(running, "collect", lambda *a, **k: None)
    monkeypatch.setattr(running, "collect_audit", lambda name, out, records: seen.setdefault("collected", name))
    assert running.run_cells(args) == 0
    assert seen["collected"] == "audit-sym40-cleanlab" and "audit-sym40-cleanlab" not in seen["jobs"]


def test_a_finished_audit_is_collected_and_the_detection_table_rewritten(tmp_path):
    records = tmp_path / "r" / "cifar10"
    for name, f1, detector in (("sym40-tad20", 0.85, "tad"), ("sym40-cleanlab", 0.8, "cleanlab")):
        (tmp_path / "audit" / name).mkdir(parents=True)
        (tmp_path / "audit" / name / "result_audit.json").write_text(json.dumps(audit_record(f1, detector)))
        running.collect_audit(f"audit-{name}", tmp_path, records)
    copied = json.loads((records / "audit" / "sym40-tad20" / "result_audit.json").read_text())
    assert copied == audit_record(0.85, "tad")
    rows = json.loads((records / "audit" / "detection.json").read_text())["rows"]
    assert [(r["detector"], r["f1"], r["seconds"]) for r in rows] == [("cleanlab", 0.8, 105.0), ("tad", 0.85, 105.0)]
    assert "| sym 40% | tad |" in (records / "audit" / "detection.md").read_text()


@pytest.mark.skipif(os.name != "posix", reason="file locks (fcntl) are POSIX")
def test_a_second_runner_on_the_same_out_stops_at_once(tmp_path, monkeypatch):
    """Two runners on one --out would train the same shared buffers twice: the second stops before any job, and
    the folder is free again once the first ends."""
    _inputs_here(tmp_path, monkeypatch)
    monkeypatch.setattr(running, "run_parallel", lambda jobs, *a, **k: pytest.fail("nothing may start"))
    monkeypatch.setattr(running, "gpu_ids", lambda spec: [])
    first = running.hold_out(tmp_path)
    with pytest.raises(SystemExit, match=f"--out {tmp_path}: another reproduce run is using this folder"):
        running.run_cells(_args(tmp_path, ["mtt-ipc50-sym40-noisy", "att-ipc50-sym40-noisy"], jobs=2))
    first.close()
    running.hold_out(tmp_path).close()


def test_a_finished_cell_is_collected_with_its_cell_entry(tmp_path, monkeypatch):
    _inputs_here(tmp_path, monkeypatch)
    seen = {}
    monkeypatch.setattr(running, "run_parallel",
                        lambda jobs, *a, **k: seen.update(jobs=jobs, **k) or {j: 0 for j in jobs})
    monkeypatch.setattr(running, "gpu_ids", lambda spec: [])
    monkeypatch.setattr(running, "buffer_ready", lambda path, experts: False)
    assert running.run_cells(_args(tmp_path, ["mtt-ipc50-sym40-noisy", "att-ipc50-sym40-noisy"])) == 0
    assert seen["after"]["att-ipc50-sym40-noisy"] == ["buffer-sym40-noisy-sgd-raw"]
    run = {"config": {"method": "att"}, "results": {"test_acc_mean": 0.5}, "stages": {"buffer": {"reused": "b"}}}
    (tmp_path / "att-ipc50-sym40-noisy").mkdir()
    (tmp_path / "att-ipc50-sym40-noisy" / "result_run.json").write_text(json.dumps(run))
    seen["on_done"]("buffer-sym40-noisy-sgd-raw")  # a buffer job: nothing to collect
    seen["on_done"]("att-ipc50-sym40-noisy")
    rec = json.loads((tmp_path / "r" / "cifar10" / "att-ipc50-sym40-noisy.json").read_text())
    assert {k: rec[k] for k in run} == run  # result_run.json's content, and the cell
    assert rec["cell"] == {"name": "att-ipc50-sym40-noisy", "method": "att", "ipc": 50, "noise": "sym40",
                           "arm": "noisy", "reg": False, "outer_loop": False, "inner_loop": False,
                           "buffer": "sym40-noisy-sgd-raw", "budget": "short"}
    assert list((tmp_path / "r" / "cifar10").iterdir()) == [tmp_path / "r" / "cifar10" / "att-ipc50-sym40-noisy.json"]
    report = tmp_path / "buffers" / "sym40-tad-sgd" / "buffer" / "trust_report.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"rounds": []}')
    (tmp_path / "mtt-ipc1-sym40-tad").mkdir()
    (tmp_path / "mtt-ipc1-sym40-tad" / "result_run.json").write_text(json.dumps(
        {"stages": {"buffer": {"reused": "b", "trust_report": str(report)}}}))
    running.collect("mtt-ipc1-sym40-tad", tmp_path, tmp_path / "r" / "cifar10", grid.cells()["mtt-ipc1-sym40-tad"])
    assert (tmp_path / "r" / "cifar10" / "mtt-ipc1-sym40-tad.trust_report.json").read_text() == '{"rounds": []}'
    assert not (tmp_path / "r" / "cifar10" / "mtt-ipc1-sym40-tad.trust_report.png").exists()  # none drawn


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_single_job_runs_in_the_foreground_on_the_first_gpu_given(tmp_path, monkeypatch, capsys, exit_code):
    _inputs_here(tmp_path, monkeypatch)
    seen = {}

    class FakePopen:
        def __init__(self, cmd, env, preexec_fn=None):
            seen.update(cmd=cmd, gpu=env.get("CUDA_VISIBLE_DEVICES"))
            (tmp_path / "mtt-ipc10-sym40-tad-x").mkdir()
            (tmp_path / "mtt-ipc10-sym40-tad-x" / "result_run.json").write_text('{"results": {}}')

        def wait(self):
            return exit_code

        def poll(self):
            return exit_code

    monkeypatch.setattr(running.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(running, "buffer_ready", lambda path, experts: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = _args(tmp_path, ["mtt-ipc10-sym40-tad"], gpus="1,0", tag="x")
    assert running.run_cells(args) == (0 if exit_code == 0 else 1)
    assert seen["gpu"] == "1" and seen["cmd"][seen["cmd"].index("--out") + 1] == str(tmp_path / "mtt-ipc10-sym40-tad-x")
    record = tmp_path / "r" / "cifar10" / "mtt-ipc10-sym40-tad-x.json"
    if exit_code == 0:
        assert json.loads(record.read_text())["cell"]["buffer"] == "sym40-tad-sgd-zca-x"
    else:  # a failed run is named, and nothing is collected
        assert "FAILED mtt-ipc10-sym40-tad-x (exit 3)" in capsys.readouterr().err and not record.exists()


def test_run_parallel_waits_for_what_a_job_needs_and_skips_it_when_that_failed(tmp_path):
    jobs = {"buf": _job(tmp_path, "buf", seconds=0.5), "cell": _job(tmp_path, "cell"),
            "bad": _job(tmp_path, "bad", code=2), "after_bad": _job(tmp_path, "after_bad"),
            "free": _job(tmp_path, "free")}
    codes = running.run_parallel(jobs, tmp_path / "logs", slots=2, gpus=["0"], poll_s=0.05,
                               after={"cell": ["buf"], "after_bad": ["bad"]})
    assert codes == {"buf": 0, "cell": 0, "bad": 2, "after_bad": running.SKIPPED, "free": 0}
    (_, buf1), (cell0, _), (free0, _) = _times(tmp_path, "buf"), _times(tmp_path, "cell"), _times(tmp_path, "free")
    assert cell0 >= buf1 and free0 < buf1  # cell waited for its buffer; free did not wait behind cell
    assert not (tmp_path / "after_bad.times").exists()
    table = (tmp_path / "logs" / "schedule.md").read_text().splitlines()
    assert table[0] == "| job | GPU | start (s) | end (s) | wall (min) | exit |"
    assert [row.split(" | ")[0] for row in table[2:]][-1] == "| after_bad"
    assert all(row.split(" | ")[1] == "0" for row in table[2:-1]) and table[-1].endswith("| not started |")
    times, read = running.read_schedule(tmp_path / "logs" / "schedule.md")  # the table read back: the jobs that ran
    assert read == {n: c for n, c in codes.items() if c != running.SKIPPED} and set(times) == set(read)
    png = (tmp_path / "logs" / "schedule.png").read_bytes()  # the same as a timeline (matplotlib: the test extras)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    with pytest.raises(ValueError, match="not in jobs: nope"):
        running.run_parallel({"a": _job(tmp_path, "a")}, tmp_path / "logs", 1, [], after={"a": ["nope"]})
    running.run_parallel({"bad": _job(tmp_path, "bad")}, tmp_path / "logs", 1, ["1"], poll_s=0.05)  # a rerun
    log = (tmp_path / "logs" / "bad.log").read_text().splitlines()  # both attempts, each under its command
    assert log[0].startswith("=== ") and log[0].endswith(" ".join(_job(tmp_path, "bad", code=2))) and log[1] == "gpu=0"
    assert log[2].startswith("=== ") and log[2].endswith(" ".join(_job(tmp_path, "bad"))) and log[3] == "gpu=1"
    assert len(log) == 4


def _job(tmp_path, name, seconds=0.0, code=0):
    """A command that records its start and end times and CUDA_VISIBLE_DEVICES, sleeps, then exits with code."""
    script = (f"import os, sys, time; t = time.time(); time.sleep({seconds}); "
              f"open({str(tmp_path / name)!r} + '.times', 'w').write(f'{{t}} {{time.time()}}'); "
              f"print('gpu=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); sys.exit({code})")
    return [sys.executable, "-c", script]


def _times(tmp_path, name):
    return tuple(float(v) for v in (tmp_path / f"{name}.times").read_text().split())


def test_run_parallel_keeps_at_most_slots_jobs_per_queue(tmp_path):
    jobs = {n: _job(tmp_path, n, seconds=0.6) for n in ("a", "b", "c")}
    codes = running.run_parallel(jobs, tmp_path / "logs", slots=2, gpus=[], poll_s=0.05)
    assert codes == {"a": 0, "b": 0, "c": 0}
    (a0, a1), (b0, b1), (c0, c1) = (_times(tmp_path, n) for n in "abc")
    assert max(a0, b0) < min(a1, b1)  # the first two overlapped
    assert c0 >= min(a1, b1) - 0.05   # the third waited for a free slot
    assert (tmp_path / "logs" / "c.log").read_text().splitlines()[1:] == ["gpu=unset"]  # under its command line


def test_run_parallel_spreads_over_gpus_and_reports_failures(tmp_path):
    jobs = {"ok": _job(tmp_path, "ok", seconds=0.3), "bad": _job(tmp_path, "bad", seconds=0.3, code=3)}
    done = []
    codes = running.run_parallel(jobs, tmp_path / "logs", slots=1, gpus=["0", "1"], on_done=done.append, poll_s=0.05)
    assert codes == {"ok": 0, "bad": 3} and done == ["ok"]
    logs = {n: (tmp_path / "logs" / f"{n}.log").read_text().splitlines()[-1] for n in jobs}
    assert sorted(logs.values()) == ["gpu=0", "gpu=1"]
    (o0, o1), (b0, b1) = _times(tmp_path, "ok"), _times(tmp_path, "bad")
    assert max(o0, b0) < min(o1, b1)  # one slot per GPU, two GPUs: both ran at once


def test_run_parallel_survives_a_failing_collection(tmp_path):
    def collect(name):
        raise FileNotFoundError(f"no result_run.json for {name}")

    codes = running.run_parallel({"a": _job(tmp_path, "a"), "b": _job(tmp_path, "b")}, tmp_path / "logs", slots=1,
                               gpus=[], on_done=collect, poll_s=0.05)
    assert codes == {"a": 1, "b": 1} and (tmp_path / "b.times").exists()  # b still ran after a's failure


def test_run_parallel_rejects_zero_slots(tmp_path):
    with pytest.raises(ValueError, match="slots"):
        running.run_parallel({}, tmp_path, slots=0, gpus=[])


def test_list_says_what_a_recorded_cell_cost(tmp_path):
    assert running.recorded_time("att-ipc10-sym40-tad", tmp_path) == ""  # nothing recorded
    rec = {"wall_time_s": 450.0, "device": "NVIDIA H100", "results": {}, "stages": {"buffer": {"reused": "r/buffer"}},
           "config": {"buffer": {"num_experts": 20, "epochs": 23}, "distill": {"iterations": 1000},
                      "eval": {"num_eval": 5}}}
    (tmp_path / "att-sym40-tad-i1000.json").write_text(json.dumps(rec))  # an earlier name of the cell
    line = running.recorded_time("att-ipc10-sym40-tad", tmp_path)
    assert line.startswith("  (recorded: 7.5 min on NVIDIA H100 (experts reused from another run: distillation only), "
                           "20 experts x 23 epochs, 1000 iterations")


#: A grid cell shrunk to seconds on the CPU (2 experts x 5 epochs, width 16, 2 distillation iterations, pixel
#: features).
TINY_GRID = ["buffer.num_experts=2", "buffer.experts_per_group=2", "buffer.epochs=5", "buffer.compile=false",
             "buffer.batch_size=64", "distill.iterations=2", "distill.syn_steps=2", "distill.expert_epochs=1",
             "distill.max_start_epoch=2", "distill.inner_grad=autograd", "distill.recompute_steps=false",
             "distill.compile_mode=default", "distill.eval_every=0", "eval.num_eval=1", "eval.epochs=2",
             "eval.compile=false", "tad.features=pixels", "tad.warmup_epochs=2", "tad.anchor_epoch=3",
             "tad.anchor_ipc=2", "tad.anchor_iterations=2", "model.width=16", "device=cpu"]


def test_a_cell_and_its_audits_run_end_to_end_through_real_commands(tmp_path):
    from tad_plugin.data import ImageDataset, save_arrays

    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 3, 32, 32, generator=g)

    def split(n):  # class-patterned images of CIFAR-10's shape
        y = torch.arange(n) % 10
        return (protos[y] * 200 + torch.rand(n, 3, 32, 32, generator=g) * 55).to(torch.uint8), y

    save_arrays(ImageDataset("cifar10", *split(300), *split(50), tuple("abcdefghij")), tmp_path / "cifar10.npz")
    cells = ["mtt-ipc1-sym40-tad", "mtt-ipc10-sym40-prune", "mtt-ipc10-sym40-relabel", "mtt-ipc10-sym40-tadprune"]
    args = _args(tmp_path, cells, dataset=str(tmp_path / "cifar10.npz"), out=str(tmp_path / "runs"),
                 jobs=2, audit=True, set=TINY_GRID)
    assert running.run_cells(args) == 0
    records = tmp_path / "r" / "cifar10"
    cell = json.loads((records / "mtt-ipc1-sym40-tad.json").read_text())
    assert cell["cell"]["buffer"] == "sym40-tad-sgd-zca" and "test_acc_mean" in cell["results"]
    assert cell["stages"]["buffer"]["reused"] == str(tmp_path / "runs" / "buffers" / "sym40-tad-sgd-zca" / "buffer")
    rows = json.loads((records / "audit" / "detection.json").read_text())["rows"]
    assert [(r["detector"], r["budget"], bool(r["reused_buffer"])) for r in rows] == [
        ("cleanlab", "5 folds x 5 ep", False), ("tad", "2 experts x 5 ep", True), ("tad", "5 experts x 5 ep", False)]
    assert {r["label_set"] for r in rows} == {"sym 40%"} and all(0 <= r["f1"] <= 1 for r in rows)
    schedule = (tmp_path / "runs" / "logs" / "schedule.md").read_text()
    assert all(f"| {job} |" in schedule for job in ("buffer-sym40-tad-sgd-zca", "mtt-ipc1-sym40-tad",
                                                    "audit-sym40-tad20", "audit-sym40-tad5", "audit-sym40-cleanlab"))
    # the two-stage cells distil from cleanlab's output: the kept samples, or all with the suggested labels
    pruned, relabelled = (json.loads((records / f"mtt-ipc10-sym40-{arm}.json").read_text())
                          for arm in ("prune", "relabel"))
    cl = next(r for r in rows if r["detector"] == "cleanlab")
    wrong_kept = 300 * cl["noise_rate"] - cl["precision"] * cl["flagged"]  # the wrong labels cleanlab let through
    assert pruned["config"]["data"]["label_set"] == "given_label"
    assert pruned["results"]["noise_rate"] == pytest.approx(wrong_kept / (300 - cl["flagged"]), abs=1e-6)
    assert relabelled["config"]["data"]["label_set"] == "cleaned_label"
    assert relabelled["results"]["noise_rate"] == pytest.approx(1 - cl["cleaned_label_accuracy"], abs=1e-6)
    # the TAD-audit arm distils from the samples TAD's audit with the TAD buffer's experts kept
    tad20 = next(r for r in rows if r["detector"] == "tad" and r["reused_buffer"])
    tadpruned = json.loads((records / "mtt-ipc10-sym40-tadprune.json").read_text())
    wrong_kept = 300 * tad20["noise_rate"] - (tad20["precision"] or 0) * tad20["flagged"]
    assert tadpruned["config"]["data"]["label_set"] == "given_label"
    assert tadpruned["config"]["data"]["dataset"].endswith("sym40-tad20/pruned/cifar10.npz")
    assert tadpruned["results"]["noise_rate"] == pytest.approx(wrong_kept / (300 - tad20["flagged"]), abs=1e-6)
    assert "## Label audit" in tables.page(records)
    # the same command again: the first stage, the buffers and the audits are done; only the cells run (resuming)
    assert all(grid.cleaning_done(tmp_path / "runs", "sym40", d, args.dataset) for d in ("cleanlab", "tad20"))
    jobs, after, _ = running.plan(args)
    assert list(jobs) == cells and after == {}


def _pid_job(tmp_path, name):
    """A job that writes its pid, then waits for a minute (until it is stopped)."""
    script = f"import os, time; open({str(tmp_path / name)!r} + '.pid', 'w').write(str(os.getpid())); time.sleep(60)"
    return [sys.executable, "-c", script]


def _written(path):
    """Whether the job has written its pid to ``path`` (the file exists, empty, a moment before)."""
    return path.is_file() and path.read_text() != ""


def _gone(pid, within_s=10.0):
    """Whether process ``pid`` has ended (and been reaped or re-parented and reaped) within ``within_s`` seconds."""
    import time

    deadline = time.monotonic() + within_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":  # a zombie: ended, not yet reaped
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@pytest.mark.parametrize("runner_ignores_sigint", [False, True])
def test_an_interrupted_runner_stops_its_jobs(tmp_path, capsys, runner_ignores_sigint):
    """Ctrl-C in the runner (here: raised when the quick job is collected) gives the running job SIGINT, so that
    running the runner again does not find it still running -- also when the runner was started with SIGINT
    ignored (a shell's background command, `nohup ... &`), which its jobs would inherit."""
    import signal

    def interrupt(name):
        while not _written(tmp_path / "slow.pid"):
            pass
        raise KeyboardInterrupt

    jobs = {"slow": _pid_job(tmp_path, "slow"), "quick": _job(tmp_path, "quick", seconds=0.3)}
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if runner_ignores_sigint else signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # grace_s 20: a job that ignored SIGINT would end by SIGKILL, silent
            running.run_parallel(jobs, tmp_path / "logs", slots=2, gpus=[], poll_s=0.05, on_done=interrupt,
                                 grace_s=20.0)
    finally:
        signal.signal(signal.SIGINT, before)
    pid = int((tmp_path / "slow.pid").read_text())
    assert _gone(pid, within_s=0.0)  # stopped and reaped before run_parallel returned
    out = capsys.readouterr().out
    assert "slow: stopped (exit " in out and "running the same command again resumes it" in out
    assert "KeyboardInterrupt" in (tmp_path / "logs" / "slow.log").read_text()


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_a_job_has_a_process_group_of_its_own(tmp_path):
    """A Ctrl-C at the terminal reaches the terminal's process group: the runner, which then stops each job with
    one SIGINT; a job in the runner's group would get a second one while it saves."""
    job = [sys.executable, "-c", "import os; print(os.getpgrp() == os.getpid(), os.getpgrp() == os.getppid())"]
    assert running.run_parallel({"j": job}, tmp_path / "logs", 1, [], poll_s=0.05) == {"j": 0}
    assert (tmp_path / "logs" / "j.log").read_text().splitlines()[-1] == "True False"


@pytest.mark.skipif(sys.platform != "linux", reason="the jobs die with the runner through Linux's PR_SET_PDEATHSIG")
def test_a_killed_runner_takes_its_jobs_along(tmp_path):
    import signal
    import subprocess

    code = (f"import sys; from tad_plugin.reproduce import running; "
            f"running.run_parallel({{'slow': {_pid_job(tmp_path, 'slow')!r}}}, __import__('pathlib').Path("
            f"{str(tmp_path / 'logs')!r}), 1, [], poll_s=0.05)")
    runner = subprocess.Popen([sys.executable, "-c", code])
    try:
        while not _written(tmp_path / "slow.pid"):
            assert runner.poll() is None
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    finally:
        runner.kill()
    assert _gone(int((tmp_path / "slow.pid").read_text()))


def test_a_missing_dataset_or_cifar_n_file_is_refused_before_any_log(tmp_path, monkeypatch):
    monkeypatch.setattr(running, "run_parallel", lambda *a, **k: pytest.fail("no job may start"))
    out = tmp_path / "runs"
    with pytest.raises(SystemExit, match=r"--dataset .*nope.npz: no such file; give the CIFAR-10 arrays file"):
        running.run_cells(_args(tmp_path, ["mtt-ipc10-sym40-noisy"], dataset=str(tmp_path / "nope.npz"), out=str(out)))
    (tmp_path / "d.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"--cifar-n .*nope.pt: no such file; give the official CIFAR-10_human.pt"):
        running.run_cells(_args(tmp_path, ["mtt-ipc1-c10n-worst-noisy"], dataset=str(tmp_path / "d.npz"),
                                cifar_n=str(tmp_path / "nope.pt"), out=str(out)))
    assert not out.exists()


def test_gpus_count_the_gpus_this_process_sees_and_refuse_others():
    # a job's CUDA_VISIBLE_DEVICES once took --gpus' index as is: under CUDA_VISIBLE_DEVICES=2,3 the jobs of
    # --gpus 0,1 (or of no --gpus) landed on GPUs 0 and 1, which the user had left out
    assert running.gpu_ids("0,1", count=2, visible="2,3") == ["2", "3"]
    assert running.gpu_ids(None, count=2, visible="2,3") == ["2", "3"]
    assert running.gpu_ids("1", count=3, visible="") == ["1"]
    assert running.gpu_ids(None, count=0, visible="") == []
    with pytest.raises(SystemExit, match=r"--gpus 0: torch sees no CUDA GPU on this machine; leave --gpus out"):
        running.gpu_ids("0", count=0, visible="")  # a job would run on the CPU unnoticed
    with pytest.raises(SystemExit, match=r"--gpus 0,2: this machine has 2 GPU\(s\) torch can see, indices 0 to 1; 2 "):
        running.gpu_ids("0,2", count=2, visible="")
    for spec in ("a", "0,0", "-1"):
        with pytest.raises(SystemExit, match="give distinct GPU indices, comma-separated"):
            running.gpu_ids(spec, count=2, visible="")


def test_a_wrong_gpu_index_is_refused_before_any_job_starts(tmp_path, monkeypatch):
    _inputs_here(tmp_path, monkeypatch)
    monkeypatch.setattr(running.subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may start"))
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    with pytest.raises(SystemExit, match="torch sees no CUDA GPU"):
        running.run_cells(_args(tmp_path, ["mtt-ipc1-sym40-noisy"], gpus="0"))
    assert not (tmp_path / "logs").exists()


def test_an_interrupted_job_in_the_foreground_gets_sigint_and_time_to_keep_its_work(tmp_path, monkeypatch):
    # the one job of a request ran through subprocess.run, which SIGKILLs its child a quarter second after Ctrl-C
    _inputs_here(tmp_path, monkeypatch)
    ready = tmp_path / "ready"
    job = [sys.executable, "-c", "import signal, sys, time, pathlib\n"
           "signal.signal(signal.SIGINT, lambda *a: (time.sleep(1), sys.exit(7)))\n"
           f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)"]
    monkeypatch.setattr(running, "plan", lambda args: ({"mtt-ipc1-sym40-noisy": job}, {}, {}))
    started = []

    class Interrupted(running.subprocess.Popen):
        def wait(self, timeout=None):
            if not started:  # the first wait: Ctrl-C reaches the runner once the job is under way
                started.append(self)
                while not ready.exists():
                    running.time.sleep(0.05)
                raise KeyboardInterrupt
            return super().wait(timeout)

    monkeypatch.setattr(running.subprocess, "Popen", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        running.run_cells(_args(tmp_path, ["mtt-ipc1-sym40-noisy"]))
    assert started[0].returncode == 7  # its own SIGINT handling ran to the end, no SIGKILL


def test_a_failed_jobs_last_lines_are_its_latest_attempts(tmp_path, monkeypatch, capsys):
    # the log keeps every attempt: its last 12 lines once showed an earlier attempt's end above a short failure
    _inputs_here(tmp_path, monkeypatch)
    (tmp_path / "logs").mkdir()
    earlier = [f"{running.ATTEMPT_MARK}2026-01-01 00:00:00: tad run ...", *(f"iteration {i}" for i in range(20)),
               "old: out of GPU memory"]
    (tmp_path / "logs" / "a.log").write_text("\n".join(earlier) + "\n")
    fail = [sys.executable, "-c", "import sys; print('new: no such file'); sys.exit(2)"]
    monkeypatch.setattr(running, "plan", lambda args: ({"a": fail, "b": _job(tmp_path, "b")}, {}, {}))
    assert running.run_cells(_args(tmp_path, ["mtt-ipc1-sym40-noisy"])) == 1
    err = capsys.readouterr().err
    shown = err.split("last lines of ")[1].splitlines()[1:]
    assert len(shown) == 2 and shown[1] == "    new: no such file"  # under the line that opened the attempt
    assert shown[0].startswith("    " + running.ATTEMPT_MARK) and shown[0].endswith(" ".join(fail))
    assert "old:" not in err and "iteration" not in err
    lines = [f"line {i}" for i in range(30)]  # a long attempt: its last 12 lines
    (tmp_path / "logs" / "c.log").write_text("\n".join(earlier + [running.ATTEMPT_MARK + "now", *lines]) + "\n")
    assert running.last_lines(tmp_path / "logs" / "c.log") == lines[-12:]
    (tmp_path / "logs" / "d.log").write_text("a\rb\nc\n")  # a log without a mark (written before them)
    assert running.last_lines(tmp_path / "logs" / "d.log") == ["a", "b", "c"]
