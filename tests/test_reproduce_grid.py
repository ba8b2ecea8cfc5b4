"""The CIFAR-10 grid (tad_plugin.reproduce.grid): the cells and their names, each cell's and buffer's command and
the config it builds, the shared buffers, the budgets, and the records of earlier names."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tad_plugin.cli import build_parser, config_from_args
from tad_plugin.reproduce import grid, tables

#: the repository's results folder and the grid's committed records in it
RESULTS_ROOT = Path(__file__).parents[1] / "results"
RESULTS = RESULTS_ROOT / "cifar10"


def config_of(cmd):
    return config_from_args(build_parser().parse_args(cmd[3:]))


def test_the_cells_cover_every_cifar10_cell_of_tables_1_to_3_and_the_two_stage_baselines():
    cells = grid.cells()
    table1 = {(m, i, n, a) for m in ("mtt", "ftd", "datm", "att") for i in (1, 10, 50)
              for n in ("sym20", "sym40", "asym20", "asym40") for a in ("noisy", "tad")}
    table2 = {(m, i, "c10n-worst", a) for m in ("mtt", "ftd", "att") for i in (1, 10, 50) for a in ("noisy", "tad")}
    table3 = {("datm", 50, n, a) for n in ("asym20", "asym40") for a in "BCDE"}
    two_stage = {("mtt", i, n, a) for i in (10, 50) for n in ("sym20", "sym40")
                 for a in ("prune", "relabel", "tadprune", "tadrelabel")}  # cleanlab's and TAD's audit first
    assert {(c.method, c.ipc, c.noise, c.arm) for c in cells.values()} == table1 | table2 | table3 | two_stage
    assert len(cells) == len(table1 | table2 | table3) + 16
    assert all(grid.CELL_RE.fullmatch(name) for name in cells)  # regular, parseable names
    # a TAD-audit arm is never read as the tad arm, nor a tad record's tag as a two-stage arm
    assert grid.cell_of_record("mtt-ipc10-sym40-tadprune") == (cells["mtt-ipc10-sym40-tadprune"], None)
    assert grid.cell_of_record("mtt-ipc10-sym40-tadrelabel-seed1") == (cells["mtt-ipc10-sym40-tadrelabel"], "seed1")
    assert grid.cell_of_record("mtt-ipc10-sym40-tad-prune") == (cells["mtt-ipc10-sym40-tad"], "prune")
    assert grid.parse_buffer("sym40-tadprune-sgd-zca") == ("sym40", "tadprune", "sgd", True)
    assert grid.parse_buffer("c10n-worst-tad-sgd-raw") == ("c10n-worst", "tad", "sgd", False)
    assert grid.resolve_cells(["mtt-ipc10-sym40-tad"]) == ["mtt-ipc10-sym40-tad"]
    assert grid.resolve_cells(["mtt-ipc50-sym20-tad*"]) == ["mtt-ipc50-sym20-tad", "mtt-ipc50-sym20-tadprune",
                                                             "mtt-ipc50-sym20-tadrelabel"]
    assert {a: grid.first_stage(a) for a in grid.TWO_STAGE_ARMS} == {
        "prune": "cleanlab", "relabel": "cleanlab", "tadprune": "tad20", "tadrelabel": "tad20"}
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
        elif cell.arm in ("prune", "tadprune"):  # the dataset without the first stage's flags, its audited labels
            first = "cleanlab" if cell.arm == "prune" else "tad20"
            pruned = str(tmp_path / "audit" / f"{cell.noise}-{first}" / "pruned" / "data.npz")
            assert (cfg.data.noise, cfg.data.dataset, cfg.data.cifar_n, cfg.data.label_set) == (
                None, pruned, pruned, "given_label"), name
        elif cell.arm in ("relabel", "tadrelabel"):  # the whole dataset, the first stage's suggested labels
            first = "cleanlab" if cell.arm == "relabel" else "tad20"
            assert (cfg.data.noise, cfg.data.dataset, cfg.data.label_set) == (None, "data.npz", "cleaned_label"), name
            assert cfg.data.cifar_n == str(tmp_path / "audit" / f"{cell.noise}-{first}" / "labels_cleaned.npz")
        else:
            kind = "symmetric" if cell.noise.startswith("sym") else "asymmetric-cifar10"
            assert (cfg.data.noise, cfg.data.noise_rate) == (kind, int(cell.noise[-2:]) / 100), name
        assert (cfg.buffer.num_experts, cfg.distill.iterations, cfg.distill.eval_every, cfg.eval.num_eval) == (
            20, 1000, 500, 5), name  # the page's budget
        reg, outer, inner = cell.parts
        assert cfg.tad.enabled == (cell.arm not in ("noisy", "prune", "relabel", "tadprune", "tadrelabel"))
        if cfg.tad.enabled:
            assert (cfg.tad.reg_weight != 0, cfg.tad.outer_loop, cfg.tad.inner_loop) == (reg, outer, inner), name
        assert cfg.out == str(tmp_path / name)
        # the configs' route, except DATM's IPC 50: its 80 unrolled steps x 500 images recompute whole steps
        assert (cfg.distill.inner_grad, cfg.distill.recompute_steps, cfg.distill.cudnn_benchmark) == (
            "compiled", True if (cell.method, cell.ipc) == ("datm", 50) else "elementwise", True), name
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
    assert by_buffer["sym20-tadprune-sgd-zca"] == {("mtt", 10)} and by_buffer["sym40-tadrelabel-sgd-raw"] == {
        ("mtt", 50)}
    # noise x arm x (recipe, preprocessing), Table 3's B-E, the two-stage arms' (noise x arm x preprocessing)
    assert len(by_buffer) == 5 * 2 * 4 + 2 * 4 + 2 * 4 * 2
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
