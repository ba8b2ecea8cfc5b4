"""The CIFAR-10 grid runner (tad_plugin.reproduce): the grid's cells and commands, shared buffers, packing, the
queue and the generated results page."""

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from tad_plugin.cli import build_parser, config_from_args
from tad_plugin.reproduce import cifar10 as repro
from tad_plugin.reproduce import grid, queue, running, tables
from tad_plugin.reproduce import pages as results_pages

#: the repository's results folder and the grid's committed records in it
RESULTS_ROOT = Path(__file__).parents[1] / "results"
RESULTS = RESULTS_ROOT / "cifar10"


def page_text(results):
    """The results page from the records in ``results`` with its links reduced to their text."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", tables.page(results))


def detail(results, name):
    """The detail page of record ``name`` after the results page of ``results`` is generated."""
    tables.page(results)
    return (results / "cells" / f"{name}.md").read_text()


def config_of(cmd):
    return config_from_args(build_parser().parse_args(cmd[3:]))


def cmd_value(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_the_cells_cover_every_cifar10_cell_of_tables_1_to_3_and_the_two_stage_baselines():
    cells = grid.cells()
    table1 = {(m, i, n, a) for m in ("mtt", "ftd", "datm", "att") for i in (1, 10, 50)
              for n in ("sym20", "sym40", "asym20", "asym40") for a in ("noisy", "tad")}
    table2 = {(m, i, "c10n-worst", a) for m in ("mtt", "ftd", "att") for i in (1, 10, 50) for a in ("noisy", "tad")}
    table3 = {("datm", 50, n, a) for n in ("asym20", "asym40") for a in "BCDE"}
    two_stage = {("mtt", i, n, a) for i in (10, 50) for n in ("sym20", "sym40") for a in ("prune", "relabel")}
    assert {(c.method, c.ipc, c.noise, c.arm) for c in cells.values()} == table1 | table2 | table3 | two_stage
    assert all(grid.CELL_RE.fullmatch(name) for name in cells)  # regular, parseable names
    assert {(m, n, i) for m, i, n, _ in table1 | table2} == set(grid.PAPER)  # a paper pair for each
    # Table 3's A and F are the noisy and tad cells
    assert grid.resolve_cells(["datm-ipc50-asym40-A", "datm-ipc50-asym40-F"]) == ["datm-ipc50-asym40-noisy",
                                                                                   "datm-ipc50-asym40-tad"]
    assert grid.resolve_cells(["datm-ipc50-asym20-?"]) == [f"datm-ipc50-asym20-{a}" for a in
                                                            ("noisy", "tad", "B", "C", "D", "E")]
    assert grid.resolve_cells(["all"]) == list(cells)
    with pytest.raises(SystemExit, match="no such cell"):
        grid.resolve_cells(["mtt-ipc20-sym40-tad"])


def test_each_cells_command_builds_the_config_the_page_says(tmp_path):
    epochs = {}
    for name, cell in grid.cells().items():
        cmd = grid.command(name, "data.npz", tmp_path, "CIFAR-10_human.pt", "short")  # any file name
        cfg = config_of(cmd)
        defaults = grid.method_defaults(cell.method, cell.ipc)
        table = defaults["distill"]
        assert cfg.method == cell.method and cfg.distill.ipc == cell.ipc, name
        own = {k: v for k, v in table.items() if k not in ("iterations", "eval_every")}  # the budget's
        assert {k: getattr(cfg.distill, k) for k in own} == own, name  # the method's own row
        assert cfg.data.zca == defaults["data"]["zca"] == (cell.method == "datm" or cell.ipc != 50), name  # its own
        epochs.setdefault(cfg.buffer.epochs, set()).add((cell.method, cell.ipc))
        if cell.noise == "c10n-worst":
            assert (cfg.data.noise, cfg.data.label_set, cfg.data.cifar_n) == (None, "worse_label", "CIFAR-10_human.pt")
        elif cell.arm == "prune":  # the dataset without cleanlab's flags, its audited labels
            pruned = str(tmp_path / "audit" / f"{cell.noise}-cleanlab" / "pruned" / "data.npz")
            assert (cfg.data.noise, cfg.data.dataset, cfg.data.cifar_n, cfg.data.label_set) == (
                None, pruned, pruned, "given_label"), name
        elif cell.arm == "relabel":  # the whole dataset, cleanlab's suggested labels
            assert (cfg.data.noise, cfg.data.dataset, cfg.data.label_set) == (None, "data.npz", "cleaned_label"), name
            assert cfg.data.cifar_n == str(tmp_path / "audit" / f"{cell.noise}-cleanlab" / "labels_cleaned.npz")
        else:
            kind = "symmetric" if cell.noise.startswith("sym") else "asymmetric-cifar10"
            assert (cfg.data.noise, cfg.data.noise_rate) == (kind, int(cell.noise[-2:]) / 100), name
        assert (cfg.buffer.num_experts, cfg.distill.iterations, cfg.distill.eval_every, cfg.eval.num_eval) == (
            20, 1000, 500, 5), name  # the page's budget
        reg, outer, inner = cell.parts
        assert cfg.tad.enabled == (cell.arm not in ("noisy", "prune", "relabel"))
        if cfg.tad.enabled:
            assert (cfg.tad.reg_weight != 0, cfg.tad.outer_loop, cfg.tad.inner_loop) == (reg, outer, inner), name
        assert cfg.out == str(tmp_path / name)
        buf = cmd[cmd.index("--buffer") + 1]
        assert buf == str(tmp_path / "buffers" / grid.buffer_of(cell) / "buffer")
    # the epochs of the buffer each cell reads: MTT's and ATT's ZCA buffer serves IPC 1 and 10 (20 + 2 + 1)
    assert epochs == {23: {(m, i) for m in ("mtt", "att") for i in (1, 10)},
                      43: {(m, i) for m in ("ftd", "datm") for i in (1, 10, 50)} | {("mtt", 50), ("att", 50)}}


def test_table_3s_switches_change_exactly_the_part_they_name(tmp_path):
    def cfg(arm):
        return asdict(config_of(grid.command(f"datm-ipc50-asym40-{arm}", "d.npz", tmp_path, None,
                                                                "short")))

    def diff(a, b):
        return {f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s][k] != b[s][k]}

    full = cfg("tad")
    assert diff(cfg("E"), full) == {"tad.reg_weight"}  # Reg off
    assert diff(cfg("D"), full) == {"tad.inner_loop"}  # IL off
    assert diff(cfg("C"), full) == {"tad.reg_weight", "tad.inner_loop"}
    # OL off: no division, so the division's two asymmetric-noise remedies go with it (and IL needs OL)
    assert diff(cfg("B"), full) == {"tad.outer_loop", "tad.inner_loop", "tad.balance_classes",
                                    "tad.warmup_confidence_penalty"}
    assert diff(cfg("noisy"), full) == {"tad.enabled"}
    assert cfg("E")["tad"]["reg_weight"] == 0 and cfg("B")["tad"]["outer_loop"] is False


def test_arms_of_a_setting_differ_only_in_tad(tmp_path):
    for cell in grid.cells().values():
        if cell.arm != "noisy":
            continue
        a, b = (config_of(grid.command(f"{cell.setting}-{arm}", "d.npz", tmp_path, "n.pt", "short"))
                for arm in ("noisy", "tad"))
        a.tad.enabled, a.out = b.tad.enabled, b.out
        assert a == b


def test_one_buffer_per_noise_arm_recipe_and_preprocessing_serves_the_ipcs_that_share_them(tmp_path):
    cells = grid.cells()
    by_buffer = {}
    for cell in cells.values():
        by_buffer.setdefault(grid.buffer_of(cell), set()).add((cell.method, cell.ipc))
    zca = {(m, i) for m in ("mtt", "att") for i in (1, 10)}
    raw = {("mtt", 50), ("att", 50)}  # upstream's MTT and ATT IPC-50 rows: no ZCA
    assert by_buffer["sym40-tad-sgd-zca"] == by_buffer["sym40-noisy-sgd-zca"] == zca  # MTT's serves ATT
    assert by_buffer["sym40-tad-sgd-raw"] == by_buffer["sym40-noisy-sgd-raw"] == raw
    assert by_buffer["sym40-tad-gsam-a0.3-zca"] == {("datm", i) for i in (1, 10, 50)} | {("ftd", 1), ("ftd", 10)}
    assert by_buffer["sym40-tad-gsam-a1-raw"] == {("ftd", 50)}  # FTD's IPC 50 row: GSAM alpha 1, no ZCA
    assert by_buffer["c10n-worst-tad-sgd-zca"] == zca and "c10n-worst-tad-gsam-a0.3-zca" in by_buffer  # FTD's
    assert by_buffer["asym40-B-gsam-a0.3-zca"] == {("datm", 50)}
    assert by_buffer["sym40-prune-sgd-zca"] == {("mtt", 10)} and by_buffer["sym40-relabel-sgd-raw"] == {("mtt", 50)}
    # noise x arm x (recipe, preprocessing), Table 3's B-E, the two-stage arms' (noise x arm x preprocessing)
    assert len(by_buffer) == 5 * 2 * 4 + 2 * 4 + 2 * 2 * 2
    # each trained for its longest reader: IPC 10's 20 + 2 + 1 with ZCA, IPC 50's 40 + 2 + 1 without
    assert (grid.read_epochs("sgd", True), grid.read_epochs("sgd", False)) == (23, 43)
    assert (grid.read_epochs("gsam-a0.3", True), grid.read_epochs("gsam-a1", False)) == (43, 43)
    assert grid.trainer("sgd", False) == ("mtt", 50) and grid.trainer("gsam-a0.3", True) == ("datm", 1)
    with pytest.raises(ValueError, match="no cell reads a gsam-a1 buffer with preprocessing zca"):
        grid.trainer("gsam-a1", True)
    with pytest.raises(ValueError, match="expected <noise>-<arm>-<recipe>-<zca|raw>"):
        grid.parse_buffer("sym40-noisy-sgd")
    for buf in by_buffer:
        cmd = grid.buffer_command(buf, "d.npz", tmp_path, "n.pt", "short")
        assert cmd[3] == "buffer" and cmd[cmd.index("--out") + 1] == str(tmp_path / "buffers" / buf)
        trained = config_of(cmd)
        for method, ipc in by_buffer[buf]:  # the experts its cells read: same labels, arm, parts, recipe
            cell = next(c for c in cells.values() if grid.buffer_of(c) == buf and (c.method, c.ipc) == (method, ipc))
            reader = config_of(grid.command(cell.name, "d.npz", tmp_path, "n.pt", "short"))
            assert trained.data == reader.data and trained.tad == reader.tad, (buf, cell.name)
            assert (trained.buffer.optimizer, trained.buffer.alpha, trained.buffer.epochs) == (
                reader.buffer.optimizer, reader.buffer.alpha, reader.buffer.epochs)
            assert trained.buffer.epochs >= reader.distill.max_start_epoch + reader.distill.expert_epochs
    assert config_of(grid.buffer_command("sym20-noisy-sgd-raw", "d.npz", tmp_path, None, "short")).method == "mtt"
    assert config_of(grid.buffer_command("sym20-noisy-gsam-a0.3-zca", "d.npz", tmp_path, None,
                                          "short")).method == "datm"
    # the full budget: each trainer's own epochs (DATM's 100 also cover FTD's reads)
    assert "buffer.epochs=100" in grid.buffer_command("sym40-tad-gsam-a0.3-zca", "d.npz", tmp_path, None, "full")


def test_a_users_zca_setting_puts_every_cell_on_one_preprocessing(tmp_path):
    sets = ["data.zca=true"]
    assert {grid.buffer_of(c, sets) for c in grid.cells().values() if c.noise == "sym40" and c.arm == "noisy"} == {
        "sym40-noisy-sgd-zca", "sym40-noisy-gsam-a0.3-zca", "sym40-noisy-gsam-a1-zca"}
    assert grid.read_epochs("sgd", True, sets) == 43  # now IPC 50 reads it too
    cmd = grid.command("mtt-ipc50-sym40-noisy", "d.npz", tmp_path, None, "short", sets)
    cfg = config_of(cmd)
    assert cfg.data.zca and cfg.buffer.epochs == 43
    assert cmd[cmd.index("--buffer") + 1] == str(tmp_path / "buffers" / "sym40-noisy-sgd-zca" / "buffer")


def test_records_of_earlier_names_stand_for_their_cells(tmp_path):
    assert grid.cell_of_record("att-sym40-tad-i1000") == (grid.Cell("att", 10, "sym40", "tad"), "i1000")
    assert grid.cell_of_record("c10n-worst-noisy") == (grid.Cell("mtt", 10, "c10n-worst", "noisy"), None)
    assert grid.cell_of_record("mtt-ipc50-c10n-worst-tad-seed1") == (grid.Cell("mtt", 50, "c10n-worst", "tad"),
                                                                      "seed1")
    assert grid.cell_of_record("datm-ipc50-asym40-F") == (grid.Cell("datm", 50, "asym40", "tad"), None)
    assert grid.cell_of_record("clean-thing") is None
    # the committed records the map names exist, are those cells, and ran the grid's experts and iterations
    for cell, old in grid.LEGACY_RECORDS.items():
        rec = json.loads((RESULTS / f"{old}.json").read_text())
        c, cfg = grid.cells()[cell], rec["config"]
        assert (cfg["method"], cfg["distill"]["ipc"], cfg["tad"]["enabled"]) == (c.method, c.ipc, c.tad), cell
        assert (cfg["buffer"]["num_experts"], cfg["distill"]["iterations"]) == tables.GRID_BUDGET, cell
        assert grid.cell_of_record(old)[0] == c
    # a record under the cell's own name wins over the earlier one
    (tmp_path / "asym40-tad.json").write_text("{}")
    assert grid.record_name("mtt-ipc10-asym40-tad", tmp_path) == "asym40-tad"
    (tmp_path / "mtt-ipc10-asym40-tad.json").write_text("{}")
    assert grid.record_name("mtt-ipc10-asym40-tad", tmp_path) == "mtt-ipc10-asym40-tad"


def _args(tmp_path, cells, **kw):
    base = dict(cell=cells, set=[], dataset="d.npz", out=str(tmp_path), cifar_n="h.pt", jobs=1, gpus=None,
                budget="short", tag=None, seeds=[0], features_budget=12.0, audit=False,
                results=str(tmp_path / "r"))
    return argparse.Namespace(**{**base, **kw})


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
    with pytest.raises(SystemExit, match="--seeds"):
        running.plan(_args(tmp_path, ["att-ipc10-sym40-tad"], seeds=[-1]))


def test_audit_runs_the_detection_rows_beside_the_tad_buffers_of_mtts_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    cells = ["mtt-ipc10-sym40-tad", "mtt-ipc10-sym40-noisy", "mtt-ipc50-sym40-tad"]
    jobs, after, _ = running.plan(_args(tmp_path, cells, audit=True))
    audits = [j for j in jobs if j.startswith("audit-")]
    assert audits == ["audit-sym40-tad20", "audit-sym40-tad5", "audit-sym40-cleanlab"]  # not for the raw IPC-50 one
    tad20, tad5, cl = (config_of(jobs[a]) for a in audits)
    assert all(jobs[a][3] == "audit" for a in audits)
    assert [jobs[a][jobs[a].index("--out") + 1] for a in audits] == [
        str(tmp_path / "audit" / n) for n in ("sym40-tad20", "sym40-tad5", "sym40-cleanlab")]
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
    with pytest.raises(SystemExit, match="--audit .* drop --tag and --seeds"):
        running.plan(_args(tmp_path, cells, audit=True, tag="x"))


def test_the_two_stage_buffers_wait_for_cleanlabs_first_stage_once_per_label_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    cells = ["mtt-ipc10-sym40-prune", "mtt-ipc10-sym40-relabel", "mtt-ipc50-sym40-prune"]
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert list(jobs) == ["audit-sym40-cleanlab", "buffer-sym40-prune-sgd-zca", "mtt-ipc10-sym40-prune",
                          "buffer-sym40-relabel-sgd-zca", "mtt-ipc10-sym40-relabel", "buffer-sym40-prune-sgd-raw",
                          "mtt-ipc50-sym40-prune"]  # no extractor: TAD is off in all of them
    assert after["buffer-sym40-prune-sgd-raw"] == after["buffer-sym40-relabel-sgd-zca"] == ["audit-sym40-cleanlab"]
    first = jobs["audit-sym40-cleanlab"]
    assert first == grid.audit_commands("sym40-tad-sgd-zca", "d.npz", tmp_path, "h.pt", "short")[
        "audit-sym40-cleanlab"]  # the same run as --audit's cleanlab row
    assert first[-3:] == ["--detector", "cleanlab", "--write-pruned"] and config_of(first).buffer.epochs == 23
    assert config_of(first).data.noise_rate == 0.4 and not config_of(jobs["buffer-sym40-prune-sgd-zca"]).tad.enabled
    # its output in place: the buffers start at once
    (tmp_path / "audit" / "sym40-cleanlab" / "pruned").mkdir(parents=True)
    (tmp_path / "audit" / "sym40-cleanlab" / "labels_cleaned.npz").write_bytes(b"x")
    jobs, after, _ = running.plan(_args(tmp_path, cells))
    assert "audit-sym40-cleanlab" not in jobs and not any(j.startswith("buffer-") for j in after)


def test_the_page_shows_the_two_stage_cells_beside_the_noisy_and_tad_ones(tmp_path):
    for arm, acc in (("noisy", 0.50), ("prune", 0.53), ("relabel", 0.52), ("tad", 0.56)):
        (tmp_path / f"mtt-ipc10-sym40-{arm}.json").write_text(json.dumps(
            {"config": {"buffer": {"num_experts": 20}, "distill": {"iterations": 1000}},
             "results": {"test_acc_mean": acc, "test_acc_std": 0.01}}))
    lines = tables.two_stage_lines(tmp_path)
    row = next(line for line in lines if line.startswith("| 10 | sym40 |"))
    assert "[50.0](" in row and "[53.0](" in row and "(+3.0)" in row and "(+2.0)" in row and "(+6.0)" in row
    assert next(line for line in lines if line.startswith("| 50 | sym20 |")).count("not run") == 4
    text = tables.page(tmp_path)
    assert "### Two-stage baselines" in text
    assert "TAD at least as good as both cleanlab pipelines in every cell (the paper: TAD above C2D and " \
           "L2B-DivideMix): 1 of 1 measured hold; 3 not measured yet" in text
    assert tables.cell_words(grid.cells()["mtt-ipc10-sym40-prune"]).startswith("two-stage baseline: cleanlab prunes")


def test_a_finished_audit_is_collected_and_the_detection_table_rewritten(tmp_path):
    def record(f1, detector):
        return {"detector": detector, "device": "gpu",
                "config": {"data": {"noise": "symmetric", "noise_rate": 0.4},
                           "buffer": {"num_experts": 20, "epochs": 23}},
                "stages": {"buffer": {"wall_time_s": 100.0}, "audit": {"wall_time_s": 5.0}},
                "results": {"detection": {"noise_rate": 0.4, "flagged": 100, "precision": 0.9, "recall": 0.8,
                                          "f1": f1, "suggested_accuracy": 0.7, "cleaned_label_accuracy": 0.9}}}

    records = tmp_path / "r" / "cifar10"
    for name, f1, detector in (("sym40-tad20", 0.85, "tad"), ("sym40-cleanlab", 0.8, "cleanlab")):
        (tmp_path / "audit" / name).mkdir(parents=True)
        (tmp_path / "audit" / name / "result_audit.json").write_text(json.dumps(record(f1, detector)))
        running.collect_audit(f"audit-{name}", tmp_path, records)
    assert json.loads((records / "audit" / "sym40-tad20" / "result_audit.json").read_text()) == record(0.85, "tad")
    rows = json.loads((records / "audit" / "detection.json").read_text())["rows"]
    assert [(r["detector"], r["f1"], r["seconds"]) for r in rows] == [("cleanlab", 0.8, 105.0), ("tad", 0.85, 105.0)]
    assert "| sym 40% | tad |" in (records / "audit" / "detection.md").read_text()


def test_a_finished_cell_is_collected_with_its_cell_entry(tmp_path, monkeypatch):
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
    seen = {}

    def fake_run(cmd, env):
        seen.update(cmd=cmd, gpu=env.get("CUDA_VISIBLE_DEVICES"))
        (tmp_path / "mtt-ipc10-sym40-tad-x").mkdir()
        (tmp_path / "mtt-ipc10-sym40-tad-x" / "result_run.json").write_text('{"results": {}}')
        return running.subprocess.CompletedProcess(cmd, exit_code)

    monkeypatch.setattr(running.subprocess, "run", fake_run)
    monkeypatch.setattr(running, "buffer_ready", lambda path, experts: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = _args(tmp_path, ["mtt-ipc10-sym40-tad"], gpus="1,0", tag="x")
    assert running.run_cells(args) == (0 if exit_code == 0 else 1)
    assert seen["gpu"] == "1" and seen["cmd"][seen["cmd"].index("--out") + 1] == str(tmp_path / "mtt-ipc10-sym40-tad-x")
    record = tmp_path / "r" / "cifar10" / "mtt-ipc10-sym40-tad-x.json"
    if exit_code == 0:
        assert json.loads(record.read_text())["cell"]["buffer"] == "sym40-tad-sgd-zca-x"
    else:  # a failed run is named, and nothing is collected
        assert "FAILED mtt-ipc10-sym40-tad-x (exit 3)" in capsys.readouterr().err and not record.exists()


def test_cell_all_runs_every_cell_of_the_grid(monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_cells", lambda args: seen.update(cells=grid.resolve_cells(args.cell)) or 0)
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--cell", "all"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    assert exit_.value.code == 0 and seen["cells"] == list(grid.cells()) and len(seen["cells"]) == 130


def test_tad_reproduce_writes_the_queue_under_its_results_folder(tmp_path, monkeypatch, capsys):
    from tad_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--queue", "--results", str(tmp_path / "mine")]) == 0
    queue = (tmp_path / "mine" / "cifar10" / "QUEUE.md").read_text()
    assert "130 of 130 cells left" in queue and "--cell mtt-ipc1-sym20-noisy" in queue
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # nothing written beside it
    assert main(["reproduce"]) == 2 and "give --list, --cell CELL, --queue or --page" in capsys.readouterr().err


def test_the_script_reads_the_checkouts_results_from_any_folder(tmp_path):
    script = RESULTS_ROOT.parent / "reproduction" / "reproduce_cifar10.py"
    listed = subprocess.run([sys.executable, str(script), "--list"], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout
    recorded = {line.split(":")[0] for line in listed.splitlines() if "(recorded:" in line}
    assert recorded and recorded == {c for c in grid.cells() if running.recorded_time(c, RESULTS)}  # the committed ones
    assert f"--config {grid.CONFIGS / 'cifar10_sym.yaml'}" in listed and (grid.CONFIGS / "cifar10_sym.yaml").is_file()
    assert list(tmp_path.iterdir()) == []


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
    with pytest.raises(ValueError, match="not in jobs: nope"):
        running.run_parallel({"a": _job(tmp_path, "a")}, tmp_path / "logs", 1, [], after={"a": ["nope"]})


def test_the_queue_lists_the_cells_left_in_order_with_their_commands(tmp_path):
    done = {"results": {"test_acc_mean": 0.6}, "config": {}}
    (tmp_path / "mtt-ipc1-sym20-noisy.json").write_text(json.dumps(done))
    (tmp_path / "asym40-tad.json").write_text(json.dumps(done))  # an earlier name of mtt-ipc10-asym40-tad
    (tmp_path / "mtt-ipc1-sym20-tad.json").write_text(json.dumps({"results": {}, "config": {}}))  # unfinished
    text = queue.queue(tmp_path)
    assert "128 of 130 cells left" in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert [h.split(". ")[0] for h in heads] == ["## 1", "## 2", "## 3", "## 4", "## 5", "## 6"]
    assert heads[0].startswith("## 1. MTT") and heads[1].startswith("## 2. Table 3") and "ATT" in heads[2]
    first = text.split("## 2.")[0]
    assert "--cell mtt-ipc1-sym20-tad" in first and "--cell mtt-ipc1-sym20-noisy" not in first
    assert "--cell mtt-ipc10-asym40-tad " not in first and "--cell mtt-ipc10-asym40-noisy" in first
    assert "--cell datm-ipc50-asym40-B" in text.split("## 3.")[0].split("## 2.")[1]
    assert "--cell mtt-ipc50-sym40-relabel" in text.split("## 5.")[1].split("## 6.")[0] and "Two-stage" in heads[4]
    assert "--cell datm-ipc10-sym20-noisy" in text.split("## 6.")[1]
    assert "--cifar-n" in text.split("## 4.")[1].split("## 5.")[0]
    cells_listed = [w for line in text.splitlines() for w in line.split() if w in grid.cells()]
    assert len(cells_listed) == len(set(cells_listed)) == 128  # each cell left in one batch
    batch1 = next(line for line in text.splitlines() if line.startswith("- batch 1:"))
    # both arms in one window, and ATT's cells that read the same buffers beside them
    assert batch1.startswith("- batch 1: 7 cells (4 of them of later sections, reading the same buffers), about ")
    assert batch1.endswith(" min; buffers `sym20-tad-sgd-zca`, `sym20-noisy-sgd-zca`")
    assert ("--jobs 3 \\\n    --cell mtt-ipc1-sym20-tad --cell mtt-ipc10-sym20-noisy --cell mtt-ipc10-sym20-tad \\\n"
            "    --cell att-ipc1-sym20-noisy --cell att-ipc1-sym20-tad --cell att-ipc10-sym20-noisy \\\n"
            "    --cell att-ipc10-sym20-tad\n" in text)
    third = text.split("## 3.")[1].split("## 4.")[0]
    assert "Some of its cells run in batches 1, " in third and "att-ipc10-sym20-tad" not in third


def test_riders_join_a_batch_only_through_its_buffers_and_within_the_window():
    batch = ["mtt-ipc10-sym40-noisy"]
    took = queue.estimate(queue.batch_jobs(batch))
    names, took2 = queue.with_riders(batch, took, ["att-ipc10-sym40-noisy", "att-ipc10-sym40-tad",
                                                   "att-ipc50-sym40-noisy"])
    assert names == batch + ["att-ipc10-sym40-noisy"]  # the TAD buffer and the raw IPC-50 buffer are others
    assert took2 == queue.estimate(queue.batch_jobs(names)) >= took
    # a rider that would lengthen the batch past the window stays out: four distillations, three slots
    pair = ["mtt-ipc1-sym40-noisy", "mtt-ipc10-sym40-noisy"]
    took = queue.estimate(queue.batch_jobs(pair))
    assert queue.with_riders(pair, took, ["att-ipc1-sym40-noisy", "att-ipc10-sym40-noisy"], window=took) == (
        pair + ["att-ipc1-sym40-noisy"], took)


def test_estimate_shares_the_gpu_between_saturating_jobs_and_pauses_tad_buffers_for_the_extractor():
    J = queue._SimJob
    assert queue.estimate([J("buffer-a", True, 100), J("buffer-b", True, 100)]) == 200  # shared evenly
    assert queue.estimate([J("buffer-a", True, 100), J("cell", False, 50, after="buffer-a")]) == 150
    assert queue.estimate([J("buffer-a", True, 100), J("x", False, 50)], slots=1) == 150  # one at a time
    # the TAD buffer shares with the extractor until its anchors (10 s of work, 20 s of wall), waits for the
    # extractor's 300 s, then has the GPU to itself for its last 90 s
    assert queue.estimate([J("extractor", True, 300), J("buffer-t", True, 100, pause_at=10)]) == 390


def test_the_queue_batches_fit_the_window_with_both_arms_of_a_cell_together_where_they_fit():
    names = [n for n, c in grid.cells().items() if c.method == "mtt" and c.noise != "c10n-worst" and c.arm in (
        "noisy", "tad")]
    cut = queue.batches(names)
    assert sorted(n for b, _ in cut for n in b) == sorted(names)  # each cell once
    for batch, took in cut:
        assert len({grid.buffer_of(grid.cells()[n]) for n in batch}) <= queue.QUEUE_BUFFERS
        assert took <= queue.WINDOW_S or len(batch) == 1  # only a single cell may be over the window
        assert took == queue.estimate(queue.batch_jobs(batch))
    first, took = cut[0]
    assert first == ["mtt-ipc1-sym20-noisy", "mtt-ipc1-sym20-tad", "mtt-ipc10-sym20-noisy", "mtt-ipc10-sym20-tad"]
    jobs = queue.batch_jobs(first)
    assert [j.name for j in jobs][:3] == ["extractor", "buffer-sym20-noisy-sgd-zca", "mtt-ipc1-sym20-noisy"]
    tad = next(j for j in jobs if j.name == "buffer-sym20-tad-sgd-zca")
    train = 20 * 23 * queue.EXPERT_EPOCH_S * queue.TAD_BUFFER_FACTOR
    assert tad.work == train + queue.ANCHORS_S
    assert tad.pause_at == train * 10 / 23  # features first needed at the first recalibration, after the warm-up
    # a larger window keeps the IPC-50 pair together (two buffers at most: a batch of its own)
    assert [b for b, _ in queue.batches(names[:6], window=3600)] == [names[:4], names[4:6]]


def test_the_page_renders_the_tables_from_records_with_missing_cells_marked(tmp_path):
    def record(acc, experts=20, iters=1000):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.005}, "seed": 0, "commit": "abc",
                "device": "H100", "wall_time_s": 1.0, "command": "tad run",
                "config": {"buffer": {"num_experts": experts, "epochs": 43}, "distill": {"iterations": iters},
                           "eval": {"num_eval": 5}}}
    for name, acc in (("mtt-ipc50-sym40-noisy", 0.60), ("mtt-ipc50-sym40-tad", 0.68), ("mtt-ipc1-asym20-tad", 0.40),
                      ("datm-ipc50-asym40-noisy", 0.55), ("datm-ipc50-asym40-B", 0.57),
                      ("datm-ipc50-asym40-tad", 0.66)):
        (tmp_path / f"{name}.json").write_text(json.dumps(record(acc)))
    (tmp_path / "att-ipc10-c10n-worst-noisy.json").write_text(json.dumps(record(0.55, iters=2000)))
    (tmp_path / "c10n-worst-tad.json").write_text(json.dumps(record(0.58)))  # an earlier name of mtt-ipc10-...
    text = page_text(tmp_path)
    rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith("| ")}
    assert rows["| sym40 | MTT"] == ("| sym40 | MTT | not run | 44.2 -> ? | not run | 57.5 -> 64.6 (+7.1) | "
                                     "60.0 -> 68.0 (+8.0) | 60.2 -> 71.2* (+11.0) |")
    assert rows["| asym20 | MTT"].startswith("| asym20 | MTT | not run -> 40.0 | 44.5 -> 45.8 (+1.3) | not run |")
    assert rows["| c10n-worst | ATT"].split(" | ")[4] == "55.0 -> not run [20 x 43, 2000 it]"  # another budget
    assert rows["| c10n-worst | MTT"].split(" | ")[4] == "not run -> 58.0"
    assert "| c10n-worst | DATM" not in text  # Table 2 has no DATM row
    assert sum(1 for r in rows if r.split(" | ")[0] in ("| sym20", "| sym40", "| asym20", "| asym40")) == 16
    table3 = {line.split(" ")[1]: line for line in text.splitlines() if line.startswith("| ") and " (`datm-" in line}
    assert table3["A"] == "| A (`datm-ipc50-asym40-noisy`) |  |  |  | not run | 62.5 | 55.0 | 55.0 |"
    assert table3["B"] == ("| B (`datm-ipc50-asym40-B`) | yes |  |  | not run | 64.1 (+1.6) | 57.0 (+2.0) "
                           "| 58.8 (+3.8) |")
    assert table3["F"].endswith("| 66.0 (+11.0) | 70.7 (+15.7) |") and "| yes | yes | yes |" in table3["F"]
    assert "- MTT at IPC 50: TAD gains at least +6 at sym 40% and asym 40% (the paper: +11.0 and +10.9 at its " \
           "budget): 1 of 1 measured hold; 1 not measured yet" in text
    assert "F best, C and E each above A, B above A: 1 of 2 measured hold (not: F best" not in text
    assert "- `c10n-worst-tad`" not in text  # the cell's record: in the table, not among the other runs
    assert "20 experts per buffer" in text and "1000 distillation iterations" in text  # the budget, stated
    linked = tables.page(tmp_path)  # each measured number links to its record's page, which exists
    row = next(x for x in linked.splitlines() if x.startswith("| sym40 | MTT |"))
    assert (f"[60.0]({tmp_path.name}/cells/mtt-ipc50-sym40-noisy.md) -> "
            f"[68.0]({tmp_path.name}/cells/mtt-ipc50-sym40-tad.md)") in row
    assert (f"| c10n-worst | MTT | not run | 43.8 -> 46.6 (+2.8) | not run -> "
            f"[58.0]({tmp_path.name}/cells/c10n-worst-tad.md) |") in linked
    for link in re.findall(r"\]\(([^)]+\.md)\)", linked):
        if link.startswith(tmp_path.name):
            assert (tmp_path.parent / link).is_file(), link
    page = (tmp_path / "cells" / "c10n-worst-tad.md").read_text()
    assert page.startswith("# c10n-worst-tad\n\n[Results](../../README.md) / Table 2: MTT at IPC 10, c10n-worst, "
                           "with TAD")


def test_each_run_is_drawn_in_its_settings_panel():
    assert tables.curve_panel("att-sym40-tad-i1000") == "att-ipc10-sym40"  # not MTT's panel
    assert tables.curve_panel("sym40-noisy-e100-i5000") == "mtt-ipc10-sym40"
    assert tables.curve_panel("mtt-ipc50-c10n-worst-tad") == "mtt-ipc50-c10n-worst"
    assert tables.curve_panel("c10n-worst-tad-balanced") == "mtt-ipc10-c10n-worst"
    assert tables.curve_panel("clean/mtt-clean-e20-i1000") == "clean"
    assert tables.curve_panel("sym40tad") == "other"


def test_the_table_averages_a_cells_finished_seeds(tmp_path):
    def record(acc):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.005}, "config": {}}
    for name, acc in (("sym40-noisy-e20-i1000", 0.55), ("mtt-ipc10-sym40-tad", 0.62),
                      ("mtt-ipc10-sym40-tad-seed1", 0.64), ("mtt-ipc10-sym40-tad-seed2", 0.63),
                      ("att-ipc10-sym40-tad-seed1", 0.10)):
        (tmp_path / f"{name}.json").write_text(json.dumps(record(acc)))
    (tmp_path / "mtt-ipc10-sym40-tad-seed3.json").write_text(json.dumps({"results": {}, "config": {}}))  # unfinished
    (tmp_path / "mtt-ipc10-sym40-tad-seed1.trust_report.json").write_text("{}")
    row = next(x for x in page_text(tmp_path).splitlines() if x.startswith("| sym40 | MTT |"))
    assert row.split(" | ")[4] == "55.0 -> 63.0 +- 1.0 (3 seeds) (+8.0)"


def test_the_detail_page_names_the_shared_buffer_a_cell_distilled_from(tmp_path):
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"reused": "runs/buffers/sym40-noisy-sgd/buffer",
                                 "reused_meta": {"buffer": {"batch_size": 256}}}}}
    (tmp_path / "att-ipc10-sym40-noisy.json").write_text(json.dumps(rec))
    assert "| experts read from | `runs/buffers/sym40-noisy-sgd/buffer` (expert batch 256) |" in \
        detail(tmp_path, "att-ipc10-sym40-noisy")
    rec["cell"] = {"buffer": "sym40-noisy-sgd-zca"}
    (tmp_path / "att-ipc10-sym40-noisy.json").write_text(json.dumps(rec))
    assert ("| experts read from | `sym40-noisy-sgd-zca` (expert batch 256) |"
            in detail(tmp_path, "att-ipc10-sym40-noisy"))


def test_page_indexes_every_other_result_and_each_link_exists(tmp_path):
    text = tables.page(tmp_path)
    assert text.startswith("# Results") and "## Other results" in text
    for name, _ in tables.OTHER_RESULTS:
        assert f"[`{name}`]({name})" in text
        assert (RESULTS_ROOT / name).is_file(), f"the page links to a missing file: {name}"
    assert "## Label audit" not in text  # no detection table yet
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "detection.md").write_text("| label set |")
    assert "[`cifar10/audit/detection.md`](cifar10/audit/detection.md)" in tables.page(tmp_path)


def test_the_detail_page_shows_the_trusted_space_at_each_consensus_level(tmp_path):
    level = {"trusted_size": 9, "trusted_fraction": 0.6, "trusted_precision": 0.95, "clean_recall": 0.8}
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {"tad": {"enabled": True}},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "by_vote": {"0.5": level, "0.75": level,
                                             "1": {**level, "trusted_precision": 0.97, "clean_recall": 0.7}}}}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec))
    (tmp_path / "mtt-ipc10-sym40-tad.trust_report.png").write_bytes(b"\x89PNG")
    text = detail(tmp_path, "mtt-ipc10-sym40-tad")
    assert ("| >= 50% of the experts | 70.0% | 90.0% | 88.0% |\n| >= 75% of the experts | 60.0% | 95.0% | 80.0% |\n"
            "| >= 100% of the experts | 60.0% | 97.0% | 70.0% |") in text
    assert "![trust report](../mtt-ipc10-sym40-tad.trust_report.png)" in text
    assert "[how to read it](../../../docs/trust-report.md)" in text
    (tmp_path / "mtt-ipc10-sym40-noisy.json").write_text(json.dumps({"results": {}, "config": {}}))
    assert "## Trusted space" not in detail(tmp_path, "mtt-ipc10-sym40-noisy")  # no TAD, no trusted space


def test_the_detail_page_names_the_least_precise_classes_of_the_trusted_space(tmp_path):
    per_class = [{"class": c, "trusted": 100, "precision": 0.99, "clean_recall": 0.9,
                  "intruders": [[(c + 3) % 10, 1]]} for c in range(10)]
    per_class[1] = {"class": 1, "trusted": 700, "precision": 0.8, "clean_recall": 0.9, "intruders": [[9, 130], [0, 10]]}
    per_class[9]["precision"] = None  # no trusted sample labelled truck: left out
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "per_class": per_class}}}
    (tmp_path / "mtt-ipc10-asym40-tad.json").write_text(json.dumps(rec))
    assert ("| automobile | 80.0% | 700 | 130 truck, 10 airplane |\n| airplane | 99.0% | 100 | 1 cat |\n"
            "| bird | 99.0% | 100 | 1 dog |\n") in detail(tmp_path, "mtt-ipc10-asym40-tad")


def test_the_detail_page_names_the_classes_whose_clean_samples_the_trusted_space_drops(tmp_path):
    per_class = [{"class": c, "trusted": 100, "precision": 0.99, "clean_recall": 0.9 - 0.01 * c, "intruders": []}
                 for c in range(10)]
    per_class[3]["clean_recall"] = 0.445  # cat: clean under asymmetric noise, yet half of it left out
    per_class[0]["clean_recall"] = None  # no correctly labelled airplane: left out
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "per_class": per_class}}}
    (tmp_path / "mtt-ipc10-asym40-tad.json").write_text(json.dumps(rec))
    line = next(x for x in detail(tmp_path, "mtt-ipc10-asym40-tad").splitlines() if "Least recalled" in x)
    assert line.endswith("cat 44.5%; truck 81.0%; ship 82.0%.")


def test_the_detail_page_shows_the_best_evaluation_point_beside_the_last(tmp_path):
    rec = {"results": {"test_acc_mean": 0.60, "test_acc_std": 0.01, "test_acc_best_mean": 0.62,
                       "test_acc_best_std": 0.004, "best_iteration": 500}, "config": {}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec))
    assert "60.0 +- 1.0 (best 62.0 +- 0.4 @ 500)" in detail(tmp_path, "mtt-ipc10-sym40-tad")


def test_page_draws_the_curves_of_finished_and_partial_runs(tmp_path):
    finished = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
                "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.926, "clean_recall": 0.867},
                           "distill": {"evaluations": [{"iteration": 0, "mean": 0.3, "std": 0.01},
                                                       {"iteration": 250, "mean": 0.55, "std": 0.01}]}}}
    diverged = {"config": {"distill": {"lr_teacher": 0.01}}, "note": "diverged near iteration 240",
                "stages": {"distill": {"max_matching_loss": 3.25, "unstable_loss_iterations": [240, 250]}},
                "evaluations": [{"iteration": 250, "eval": {"mean": 0.2, "std": 0.0}}]}
    partial = {"config": {}, "partial": "stopped at iteration 300",
               "evaluations": [{"iteration": 0, "eval": {"mean": 0.31, "std": 0.0}},
                               {"iteration": 500, "eval": {"mean": 0.58, "std": 0.0}}]}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(finished))
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "mtt-clean-partial.json").write_text(json.dumps(partial))
    (tmp_path / "clean" / "mtt-clean-diverged.json").write_text(json.dumps(diverged))
    text = page_text(tmp_path)
    assert "- `clean/mtt-clean-partial`: MTT on the clean labels; stopped early" in text  # indexed, says it stopped
    assert "- `mtt-ipc10-sym40-tad`:" not in text  # a cell's record: in the tables, not in the index
    assert "| 0 | 30.0 | 1.0 |\n| 250 | 55.0 | 1.0 |" in detail(tmp_path, "mtt-ipc10-sym40-tad")
    page = (tmp_path / "cells" / "clean" / "mtt-clean-partial.md").read_text()
    assert "| 0 | 31.0 | 0.0 |\n| 500 | 58.0 | 0.0 |" in page and "Note on this run: stopped at iteration 300." in page
    assert "[Results](../../../README.md) / a clean-label reference run" in page
    page = (tmp_path / "cells" / "clean" / "mtt-clean-diverged.md").read_text()
    assert "unstable matching loss (up to 3.25) at 2 log points from iteration 240" in page
    assert page.endswith("## Notes\n\ndiverged near iteration 240.\n")
    png = tmp_path / "curves.png"
    if importlib.util.find_spec("matplotlib") is None:  # the plot extra is optional: no plot, no link to one
        assert not png.exists() and "curves.png" not in tables.page(tmp_path)
        assert "![accuracy curve]" not in detail(tmp_path, "mtt-ipc10-sym40-tad")
    else:
        assert (png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                and f"![curves]({tmp_path.name}/curves.png)" in tables.page(tmp_path))
        assert "![accuracy curve](mtt-ipc10-sym40-tad.png)" in detail(tmp_path, "mtt-ipc10-sym40-tad")
        assert (tmp_path / "cells" / "mtt-ipc10-sym40-tad.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "clean" / "mtt-clean-diverged.json").unlink()  # a record gone: its page and curve go too
    tables.page(tmp_path)
    assert not (tmp_path / "cells" / "clean" / "mtt-clean-diverged.md").exists()
    assert not (tmp_path / "cells" / "clean" / "mtt-clean-diverged.png").exists()


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
    assert (tmp_path / "logs" / "c.log").read_text().strip() == "gpu=unset"


def test_run_parallel_spreads_over_gpus_and_reports_failures(tmp_path):
    jobs = {"ok": _job(tmp_path, "ok", seconds=0.3), "bad": _job(tmp_path, "bad", seconds=0.3, code=3)}
    done = []
    codes = running.run_parallel(jobs, tmp_path / "logs", slots=1, gpus=["0", "1"], on_done=done.append, poll_s=0.05)
    assert codes == {"ok": 0, "bad": 3} and done == ["ok"]
    logs = {n: (tmp_path / "logs" / f"{n}.log").read_text().strip() for n in jobs}
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


def test_the_budget_line_says_how_many_labels_were_wrong():
    rec = {"config": {"buffer": {"num_experts": 20, "epochs": 23}, "distill": {"iterations": 1000},
                      "eval": {"num_eval": 5}}, "results": {"noise_rate": 0.16}}
    assert results_pages.budget(rec) == ("20 experts x 23 epochs, 1000 iterations, 5 evaluation nets; 16.0% of the "
                                 "training labels wrong")
    assert "labels wrong" not in results_pages.budget({"config": {}})  # older records without the rate


def test_page_gives_the_best_finished_clean_run_as_the_ceiling(tmp_path):
    (tmp_path / "clean").mkdir()
    def rec(acc, experts):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.004}, "config": {"buffer": {"num_experts": experts,
                "epochs": 23}, "distill": {"iterations": 3000}, "eval": {"num_eval": 5}}}
    (tmp_path / "clean" / "mtt-clean-e20.json").write_text(json.dumps(rec(0.603, 20)))
    (tmp_path / "clean" / "mtt-clean-e100.json").write_text(json.dumps(rec(0.628, 100)))
    (tmp_path / "clean" / "mtt-clean-partial.json").write_text(json.dumps({"config": {}, "results": {}}))
    line = next(x for x in page_text(tmp_path).splitlines() if x.startswith("Clean-label reference"))
    assert "`clean/mtt-clean-e100` 62.8 +- 0.4; 100 experts x 23 epochs, 3000 iterations, 5 evaluation nets" in line
    assert "the paper's MTT: 65.3" in line
    assert not any(x.startswith("Clean-label reference") for x in page_text(tmp_path / "clean").splitlines())


def test_list_says_what_a_recorded_cell_cost(tmp_path):
    assert running.recorded_time("att-ipc10-sym40-tad", tmp_path) == ""  # nothing recorded
    rec = {"wall_time_s": 450.0, "device": "NVIDIA H100", "results": {}, "stages": {"buffer": {"reused": "r/buffer"}},
           "config": {"buffer": {"num_experts": 20, "epochs": 23}, "distill": {"iterations": 1000},
                      "eval": {"num_eval": 5}}}
    (tmp_path / "att-sym40-tad-i1000.json").write_text(json.dumps(rec))  # an earlier name of the cell
    line = running.recorded_time("att-ipc10-sym40-tad", tmp_path)
    assert line.startswith("  (recorded: 7.5 min on NVIDIA H100 (experts reused from another run: distillation only), "
                           "20 experts x 23 epochs, 1000 iterations")


def test_the_detail_page_gives_the_later_recalls_of_a_record_that_has_them(tmp_path):
    later = {"rounds": 2, "recalled": 10, "accuracy": 0.8, "agree": 6, "agree_accuracy": 1.0, "disagree": 4,
             "disagree_accuracy": 0.5}
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "later_recalls": later}}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec))
    assert ("Recalls after the first round (first expert, 2 rounds): 10, 80.0% right; where the expert predicts "
            "the pseudo-label 6 (100.0% right), where it does not 4 (50.0% right)."
            in detail(tmp_path, "mtt-ipc10-sym40-tad"))


def test_page_reads_the_later_recalls_of_an_older_record_from_its_trust_report(tmp_path):
    import torch

    from tad_plugin.trust_report import TrustReport

    clean = torch.zeros(4, dtype=torch.int64)
    report, before = TrustReport(), torch.zeros(4, dtype=torch.bool)
    for trusted, labels in (([1, 0, 0, 0], [0, 0, 0, 0]), ([1, 1, 1, 0], [0, 0, 1, 0])):
        after = torch.tensor(trusted, dtype=torch.bool)
        report.add(epoch=1, stage="recalibration", trusted=after, labels=torch.tensor(labels), noisy_labels=clean,
                   clean_labels=clean, previous_trusted=before)
        before = after
    report.save_json(tmp_path / "mtt-ipc10-sym40-tad.trust_report.json")
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88}}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec))
    assert ("Recalls after the first round (first expert, 1 round): 2, 50.0% right.\n"
            in detail(tmp_path, "mtt-ipc10-sym40-tad"))


def test_page_sets_each_mtt_tad_record_against_clean_mtt_of_the_same_budget(tmp_path):
    (tmp_path / "clean").mkdir()

    def rec(acc, experts, method="mtt", tad=True, **extra):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.004},
                "config": {"method": method, "tad": {"enabled": tad}, "buffer": {"num_experts": experts, "epochs": 23},
                           "distill": {"iterations": 1000}, "eval": {"num_eval": 5}}, **extra}
    (tmp_path / "clean" / "mtt-clean-e20.json").write_text(json.dumps(rec(0.603, 20, tad=False)))
    (tmp_path / "clean" / "mtt-clean-e40-bad.json").write_text(
        json.dumps(rec(0.397, 40, tad=False, note="diverged: x")))
    (tmp_path / "sym40-tad-e20.json").write_text(json.dumps(rec(0.597, 20)))
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec(0.606, 40)))  # its only clean match diverged
    (tmp_path / "sym40-noisy-e20.json").write_text(json.dumps(rec(0.543, 20, tad=False)))  # not a TAD run
    (tmp_path / "datm-sym40-tad.json").write_text(json.dumps(rec(0.607, 20, method="datm")))  # not MTT
    lines = tables.clean_gap_lines(tmp_path)
    rows = [x for x in lines if x.startswith("| [`")]
    assert rows == [f"| [`sym40-tad-e20`]({tmp_path.name}/cells/sym40-tad-e20.md) | 20 experts x 23 epochs, 1000 "
                    f"iterations, 5 evaluation nets | 59.7 | [`clean/mtt-clean-e20`]({tmp_path.name}/cells/clean/"
                    "mtt-clean-e20.md) 60.3 | -0.6 | 64.6 vs 65.3: -0.7 |"]
    assert "| run | budget | MTT + TAD | clean MTT | gap | paper: TAD vs clean |" in lines
    assert tables.clean_gap_lines(tmp_path / "clean") == []


def test_the_page_names_tad_settings_beyond_the_papers(tmp_path):
    def record(**tad):
        return {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01},
                "config": {"tad": {"balance_classes": False, "warmup_confidence_penalty": 0.0, **tad},
                           "distill": {"label_temperature": 1.0}}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(record()))
    assert "settings the paper's TAD does not have" not in page_text(tmp_path)
    (tmp_path / "mtt-ipc10-asym40-tad.json").write_text(
        json.dumps(record(balance_classes=True, warmup_confidence_penalty=1.0)))
    line = next(x for x in page_text(tmp_path).splitlines() if "settings the paper's TAD does not have" in x)
    assert line.endswith("tad.balance_classes=True, tad.warmup_confidence_penalty=1.0 (`mtt-ipc10-asym40-tad`).")
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(record(loss_average=6)))
    line = next(x for x in page_text(tmp_path).splitlines() if "settings the paper's TAD does not have" in x)
    assert ": tad.loss_average=6 (`mtt-ipc10-sym40-tad`); tad.balance" in line


def test_the_budgets_and_the_users_sets_which_win(tmp_path):
    def cfg(budget, sets=()):
        return config_of(grid.command("att-ipc10-sym40-tad", "d.npz", tmp_path, None, budget, list(sets)))

    assert cfg("short", ["distill.iterations=2000"]).distill.iterations == 2000  # after the budget's
    long = cfg("long")
    assert (long.buffer.num_experts, long.buffer.experts_per_group, long.buffer.epochs, long.distill.iterations) == (
        100, 25, 23, 5000)
    full = cfg("full")
    assert (full.buffer.num_experts, full.buffer.epochs, full.distill.iterations) == (100, 50, 60000)  # ATT's own
    text = grid.budget_text("short")
    assert "20 experts per buffer" in text and "SGD experts with ZCA for MTT and ATT at IPC 1 / 10: 23" in text
    assert "SGD experts without ZCA for MTT and ATT at IPC 50: 43" in text
    assert "GSAM (alpha 0.3) experts with ZCA for FTD at IPC 1 / 10, DATM at IPC 1 / 10 / 50: 43" in text


def test_page_says_whether_a_repeated_run_reproduced_the_first(tmp_path):
    def record(acc, std, device):
        return {"results": {"test_acc_mean": acc, "test_acc_std": std}, "config": {}, "device": device}

    def line():
        return next(x for x in page_text(tmp_path).splitlines() if x.startswith("- A record reproduces"))

    assert line().endswith(": not measured yet")
    (tmp_path / "sym40-noisy-e20-i1000.json").write_text(json.dumps(record(0.54296, 0.0103, "H200")))
    assert line().endswith(": not measured yet")  # the first run alone stands for the cell
    (tmp_path / "mtt-ipc10-sym40-noisy.json").write_text(json.dumps(record(0.54298, 0.0107, "H100")))
    assert line().endswith(": `mtt-ipc10-sym40-noisy` run again from its settings on a fresh H100 machine: 54.30 +- "
                           "1.07 against 54.30 +- 1.03 of the first run (`sym40-noisy-e20-i1000`, H200), the same "
                           "within the spread of the evaluation nets")
    (tmp_path / "mtt-ipc10-sym40-noisy.json").write_text(json.dumps(record(0.52, 0.0107, "H100")))
    assert "outside the spread" in line()


def test_the_detail_page_gives_settings_result_provenance_and_cleaned_notes(tmp_path):
    rec = {"command": "tad run --config configs/x.yaml --tad --seed 1", "seed": 1, "commit": "0123456789abcdef0123",
           "device": "H100", "wall_time_s": 120.0, "started": "2026-11-26T13:37:46Z", "torch": "2.11", "python": "3.12",
           "results": {"test_acc_mean": 0.6, "test_acc_std": 0.01, "noise_rate": 0.16},
           "config": {"method": "datm", "seed": 1,
                      "data": {"noise": "asymmetric-cifar10", "noise_rate": 0.4, "noise_seed": 0, "zca": True},
                      "buffer": {"num_experts": 20, "epochs": 43, "optimizer": "gsam", "rho": 0.01, "alpha": 0.3,
                                 "lr": 0.01, "batch_size": 256},
                      "distill": {"ipc": 50, "iterations": 1000}, "eval": {"num_eval": 5, "epochs": 1000},
                      "tad": {"enabled": True, "reg_weight": None, "balance_classes": True, "features": "/x.pt"}},
           "cell": {"arm": "B", "reg": True, "outer_loop": False, "inner_loop": False, "buffer": "asym40-B-gsam-zca"},
           "note": "Balancing helps (58.7 vs 52.1; a first run (bcfbe8f, H200) read 48). Provenance: bash q.sh, "
                   "commit 5e749c9"}
    (tmp_path / "datm-ipc50-asym40-B.json").write_text(json.dumps(rec))
    page = detail(tmp_path, "datm-ipc50-asym40-B")
    for row in ("| method | DATM |", "| IPC | 50 |",
                "| labels | asymmetric (CIFAR-10's class flips), noise rate 40% (noise seed 0); 16.0% of the training "
                "labels wrong |", "| arm | Table 3 configuration B (Reg on) |", "| preprocessing | ZCA whitening |",
                "| experts | 20 x 43 epochs, GSAM (rho 0.01, alpha 0.3), lr 0.01, batch 256 |",
                "| experts read from | `asym40-B-gsam-zca` |", "| training seed | 1 |",
                "| `tad.reg_weight` | default |", "| `tad.balance_classes` | True |",
                "| command | `tad run --config configs/x.yaml --tad --seed 1` |", "| config file | `configs/x.yaml` |",
                "| commit | 0123456789ab |", "| wall time | 120 s (2.0 min) |", "| date | 2026-11-26 |"):
        assert row in page, row
    assert "`tad.features`" not in page  # a path of the machine it ran on, not a setting
    assert "Test accuracy of the distilled images (mean +- std over the evaluation nets, %): 60.0 +- 1.0." in page
    assert page.index("## Settings") < page.index("## Result") < page.index("## Provenance") < page.index("## Notes")
    # the note loses the launch bookkeeping and commit hashes, keeps its measurements
    assert page.endswith("## Notes\n\nBalancing helps (58.7 vs 52.1; a first run (H200) read 48).\n")


def test_generated_pages_from_the_committed_records_speak_to_users(tmp_path, monkeypatch):
    import shutil

    results = tmp_path / "cifar10"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("cells", "*.png"))
    monkeypatch.setattr(results_pages, "plot_record", lambda *args: False)  # text only: fast
    monkeypatch.setattr(tables, "plot_curves", lambda *args: False)
    pages = {"README.md": tables.page(results)}
    pages.update({p.relative_to(results).as_posix(): p.read_text() for p in sorted((results / "cells").rglob("*.md"))})
    assert len(pages) > 40
    internal = re.compile(r"\bissues? \d|\bsessions?\b|\btargets?\b|\.plan\b|"
                          r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", re.I)
    for name, text in pages.items():
        for line in text.splitlines():
            if line.startswith("| commit |"):  # a provenance field: data
                continue
            assert not internal.search(line), f"{name}: {line}"


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
    cells = ["mtt-ipc1-sym40-tad", "mtt-ipc10-sym40-prune", "mtt-ipc10-sym40-relabel"]
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
    assert "## Label audit" in tables.page(records)
