"""The CIFAR-10 reproduction script: commands per cell and the generated results page."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tad_plugin.cli import build_parser, config_from_args

SCRIPT = Path(__file__).parents[1] / "examples" / "reproduce_cifar10.py"
spec = importlib.util.spec_from_file_location("reproduce_cifar10", SCRIPT)
repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repro)


@pytest.mark.parametrize("cell", sorted(repro.cells()))
def test_each_cell_is_a_valid_tad_run(cell, tmp_path):
    cmd = repro.command(cell, "cifar10", tmp_path, "CIFAR-10_human.pt", [])
    args = build_parser().parse_args(cmd[3:])
    cfg = config_from_args(args)
    assert cfg.tad.enabled == cell.endswith("-tad")
    prefix = cell.split("-")[0]
    assert cfg.method == (prefix if prefix in ("ftd", "datm", "att") else "mtt")
    assert cfg.distill.ipc == 10 and cfg.out == str(tmp_path / cell)


def test_arms_of_a_setting_differ_only_in_tad(tmp_path):
    for setting in repro.SETTINGS:
        a, b = (config_from_args(build_parser().parse_args(repro.command(f"{setting}-{arm}", "cifar10", tmp_path,
                                                                         "n.pt", [])[3:])) for arm in ("noisy", "tad"))
        a.tad.enabled = b.tad.enabled
        a.out = b.out
        assert a == b


def test_page_compares_with_the_paper(tmp_path):
    def record(acc):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.005}, "seed": 0, "commit": "abc", "device": "H100",
                "wall_time_s": 1.0, "command": "tad run", "config": {"buffer": {"num_experts": 20, "epochs": 50},
                                                                      "distill": {"iterations": 5000},
                                                                      "eval": {"num_eval": 5}}}
    (tmp_path / "sym40-noisy.json").write_text(json.dumps(record(0.57)))
    (tmp_path / "sym40-tad.json").write_text(json.dumps(record(0.64)))
    (tmp_path / "asym40-tad.json").write_text(json.dumps(record(0.60)))
    text = repro.page(tmp_path)
    assert "| sym40 | 57.5 | 64.6 | 57.0 +- 0.5 | 64.0 +- 0.5 | TAD >= 63.0, >= +5.0 | yes | 20 x 50, 5000 it |" in text
    assert "| asym40 | 54.4 | 63.9 | not run | 60.0 +- 0.5 | TAD >= 62.0, >= +6.0 | - | 20 x 50, 5000 it |" in text
    assert "| c10n-worst | 55.7 | 64.4 | not run | not run | TAD >= 62.0, >= +5.0 | - | - |" in text
    short = record(0.55)
    short["config"]["distill"]["iterations"] = 1000
    (tmp_path / "asym40-noisy.json").write_text(json.dumps(short))
    assert "| no | noisy 20 x 50, 1000 it; TAD 20 x 50, 5000 it |" in repro.page(tmp_path)
    assert "`sym40-tad`: 20 experts x 50 epochs, 5000 iterations, 5 evaluation nets" in text


def test_page_indexes_every_other_result_and_each_link_exists(tmp_path):
    text = repro.page(tmp_path)
    assert text.startswith("# Results") and "## Other results" in text
    for name, _ in repro.OTHER_RESULTS:
        assert f"[`{name}`]({name})" in text
        assert (repro.PAGE.parent / name).is_file(), f"the page links to a missing file: {name}"


def test_page_shows_the_trusted_space_at_each_consensus_level(tmp_path):
    level = {"trusted_size": 9, "trusted_fraction": 0.6, "trusted_precision": 0.95, "clean_recall": 0.8}
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "by_vote": {"0.5": level, "0.75": level,
                                             "1": {**level, "trusted_precision": 0.97, "clean_recall": 0.7}}}}}
    (tmp_path / "sym40-tad.json").write_text(json.dumps(rec))
    text = repro.page(tmp_path)
    assert ("precision 90.0%, recall of the clean samples 88.0% (issue 5's target at sym40: >= 95 / >= 85); trusted by "
            ">= 75% "
            "of the experts: precision 95.0%, recall 80.0%; trusted by >= 100% of the experts: precision 97.0%, "
            "recall 70.0%") in text
    (tmp_path / "asym40-tad.json").write_text(json.dumps(rec))  # another noise: no sym40 target beside it
    asym = [line for line in repro.page(tmp_path).splitlines() if "final trusted space" in line]
    assert len(asym) == 2 and sum("target at sym40" in line for line in asym) == 1


def test_page_names_the_least_precise_classes_of_the_trusted_space(tmp_path):
    per_class = [{"class": c, "trusted": 100, "precision": 0.99, "clean_recall": 0.9,
                  "intruders": [[(c + 3) % 10, 1]]} for c in range(10)]
    per_class[1] = {"class": 1, "trusted": 700, "precision": 0.8, "clean_recall": 0.9, "intruders": [[9, 130], [0, 10]]}
    per_class[9]["precision"] = None  # no trusted sample labelled truck: left out
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "per_class": per_class}}}
    (tmp_path / "asym40-tad.json").write_text(json.dumps(rec))
    line = next(x for x in repro.page(tmp_path).splitlines() if "least precise classes" in x)
    assert line.endswith("automobile 80.0% of 700 (others: 130 truck, 10 airplane); airplane 99.0% of 100 "
                         "(others: 1 cat); bird 99.0% of 100 (others: 1 dog)")


def test_page_names_the_classes_whose_clean_samples_the_trusted_space_drops(tmp_path):
    per_class = [{"class": c, "trusted": 100, "precision": 0.99, "clean_recall": 0.9 - 0.01 * c, "intruders": []}
                 for c in range(10)]
    per_class[3]["clean_recall"] = 0.445  # cat: clean under asymmetric noise, yet half of it left out
    per_class[0]["clean_recall"] = None  # no correctly labelled airplane: left out
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "per_class": per_class}}}
    (tmp_path / "asym40-tad.json").write_text(json.dumps(rec))
    line = next(x for x in repro.page(tmp_path).splitlines() if "least recalled" in x)
    assert line.endswith("cat 44.5%; truck 81.0%; ship 82.0%")


def test_page_says_which_cells_reused_another_cells_experts(tmp_path):
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"reused": "runs/sym40-noisy/buffer", "reused_meta": {"buffer": {"batch_size": 256}}}}}
    (tmp_path / "att-sym40-noisy.json").write_text(json.dumps(rec))
    assert ("distilled from the buffer `runs/sym40-noisy/buffer` (trained by another run with the same labels and "
            "TAD arm; expert batch 256)") in repro.page(tmp_path)


def test_page_shows_the_best_evaluation_point_beside_the_last(tmp_path):
    rec = {"results": {"test_acc_mean": 0.60, "test_acc_std": 0.01, "test_acc_best_mean": 0.62,
                       "test_acc_best_std": 0.004, "best_iteration": 500}, "config": {}}
    (tmp_path / "sym40-tad.json").write_text(json.dumps(rec))
    assert "60.0 +- 1.0 (best 62.0 +- 0.4 @ 500)" in repro.page(tmp_path)


def test_each_run_is_drawn_in_its_settings_panel():
    assert repro.curve_panel("att-sym40-tad-i1000") == "att-sym40"  # not sym40's panel
    assert repro.curve_panel("sym40-noisy-e100-i5000") == "sym40"
    assert repro.curve_panel("att-c10n-worst-noisy") == "att-c10n-worst"
    assert repro.curve_panel("c10n-worst-tad-balanced") == "c10n-worst"
    assert repro.curve_panel("clean/mtt-clean-e20-i1000") == "clean"
    assert repro.curve_panel("sym40tad") == "other"


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
    (tmp_path / "sym40-tad.json").write_text(json.dumps(finished))
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "mtt-clean-partial.json").write_text(json.dumps(partial))
    (tmp_path / "clean" / "mtt-clean-diverged.json").write_text(json.dumps(diverged))
    text = repro.page(tmp_path)
    assert "precision 92.6%, recall of the clean samples 86.7%" in text
    assert "| run | 0 | 250 | 500 |" in text
    assert "| `sym40-tad` | 30.0 | 55.0 |  |" in text
    assert "| `clean/mtt-clean-partial` | 31.0 |  | 58.0 |" in text
    assert "(stopped at iteration 300)" in text  # a partial run says why
    assert "(distill.lr_teacher 0.01); seed None" in text
    assert "(diverged near iteration 240; unstable matching loss (up to 3.25) at 2 log points from iteration 240)" in text
    assert "- `sym40-tad`:" not in text.split("## Distillation curves")[1]  # cells are listed once, above
    assert "experts not trained here" not in text
    png = tmp_path / "curves.png"
    if importlib.util.find_spec("matplotlib") is None:  # the plot extra is optional: no plot, no link to one
        assert not png.exists() and "curves.png" not in text
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![curves](cifar10/curves.png)" in text


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
    codes = repro.run_parallel(jobs, tmp_path / "logs", slots=2, gpus=[], poll_s=0.05)
    assert codes == {"a": 0, "b": 0, "c": 0}
    (a0, a1), (b0, b1), (c0, c1) = (_times(tmp_path, n) for n in "abc")
    assert max(a0, b0) < min(a1, b1)  # the first two overlapped
    assert c0 >= min(a1, b1) - 0.05   # the third waited for a free slot
    assert (tmp_path / "logs" / "c.log").read_text().strip() == "gpu=unset"


def test_run_parallel_spreads_over_gpus_and_reports_failures(tmp_path):
    jobs = {"ok": _job(tmp_path, "ok", seconds=0.3), "bad": _job(tmp_path, "bad", seconds=0.3, code=3)}
    done = []
    codes = repro.run_parallel(jobs, tmp_path / "logs", slots=1, gpus=["0", "1"], on_done=done.append, poll_s=0.05)
    assert codes == {"ok": 0, "bad": 3} and done == ["ok"]
    logs = {n: (tmp_path / "logs" / f"{n}.log").read_text().strip() for n in jobs}
    assert sorted(logs.values()) == ["gpu=0", "gpu=1"]
    (o0, o1), (b0, b1) = _times(tmp_path, "ok"), _times(tmp_path, "bad")
    assert max(o0, b0) < min(o1, b1)  # one slot per GPU, two GPUs: both ran at once


def test_run_parallel_survives_a_failing_collection(tmp_path):
    def collect(name):
        raise FileNotFoundError(f"no result_run.json for {name}")

    codes = repro.run_parallel({"a": _job(tmp_path, "a"), "b": _job(tmp_path, "b")}, tmp_path / "logs", slots=1,
                               gpus=[], on_done=collect, poll_s=0.05)
    assert codes == {"a": 1, "b": 1} and (tmp_path / "b.times").exists()  # b still ran after a's failure


def test_run_parallel_rejects_zero_slots(tmp_path):
    with pytest.raises(ValueError, match="slots"):
        repro.run_parallel({}, tmp_path, slots=0, gpus=[])


def test_run_parallel_starts_a_job_once_it_is_ready(tmp_path):
    jobs = {"att": _job(tmp_path, "att"), "a": _job(tmp_path, "a", seconds=0.5), "c": _job(tmp_path, "c")}
    codes = repro.run_parallel(jobs, tmp_path / "logs", slots=2, gpus=[], poll_s=0.05,
                               ready={"att": lambda: (tmp_path / "a.times").exists()})
    assert codes == {"att": 0, "a": 0, "c": 0}
    (att0, _), (_, a1), (c0, _) = _times(tmp_path, "att"), _times(tmp_path, "a"), _times(tmp_path, "c")
    assert att0 >= a1 and c0 < a1  # att waited for a; c, ready, did not wait behind att
    # nothing running and nothing ready: the job starts anyway (and says itself what it misses)
    assert repro.run_parallel({"x": _job(tmp_path, "x")}, tmp_path / "logs", slots=1, gpus=[], poll_s=0.05,
                              ready={"x": lambda: False}) == {"x": 0}


@pytest.mark.parametrize("reuse", [True, False])
def test_att_cells_distil_from_the_mtt_cells_buffer(tmp_path, monkeypatch, reuse):
    seen = {}

    def fake_run_parallel(cmds, logs, slots, gpus, on_done=None, ready=None):
        seen.update(cmds=cmds, ready=ready or {})
        return {c: 0 for c in cmds}
    monkeypatch.setattr(repro, "run_parallel", fake_run_parallel)
    monkeypatch.setattr(repro, "gpu_ids", lambda spec: [])
    args = repro.argparse.Namespace(cell=["att-c10n-worst-tad", "c10n-worst-tad", "att-sym40-noisy"], set=[],
                                    dataset="d.npz", out=str(tmp_path), cifar_n="h.pt", jobs=1, gpus=None,
                                    reuse_buffers=reuse, budget="full", tag=None, seeds=[0])
    assert repro.run_cells(args) == 0
    cmds, ready = seen["cmds"], seen["ready"]
    if not reuse:
        assert not any("--buffer" in c for c in cmds.values()) and not ready
        return
    # att-c10n-worst-tad reuses c10n-worst-tad's experts and is queued after it; att-sym40-noisy trains its
    # own (sym40-noisy neither runs now nor has run into --out)
    assert list(cmds) == ["c10n-worst-tad", "att-sym40-noisy", "att-c10n-worst-tad"]
    att = cmds["att-c10n-worst-tad"]
    assert att[att.index("--buffer") + 1] == str(tmp_path / "c10n-worst-tad" / "buffer")
    assert "--buffer" not in cmds["att-sym40-noisy"] and set(ready) == {"att-c10n-worst-tad"}
    assert not ready["att-c10n-worst-tad"]()  # the MTT cell has not finished its buffer stage yet
    (tmp_path / "c10n-worst-tad").mkdir()
    (tmp_path / "c10n-worst-tad" / "result_run.json").write_text(json.dumps({"stages": {"buffer": {}}}))
    assert ready["att-c10n-worst-tad"]()


def test_ftd_cells_distil_from_the_datm_cells_buffer(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_parallel", lambda cmds, *a, **k: seen.update(cmds=cmds) or {c: 0 for c in cmds})
    monkeypatch.setattr(repro, "gpu_ids", lambda spec: [])
    args = repro.argparse.Namespace(cell=["ftd-sym40-noisy", "datm-sym40-noisy"], set=[], dataset="d.npz",
                                    out=str(tmp_path), cifar_n=None, jobs=1, gpus=None, reuse_buffers=True,
                                    budget="full", tag=None, seeds=[0])
    assert repro.run_cells(args) == 0
    cmds = seen["cmds"]
    assert list(cmds) == ["datm-sym40-noisy", "ftd-sym40-noisy"]
    ftd = cmds["ftd-sym40-noisy"]
    assert ftd[ftd.index("--buffer") + 1] == str(tmp_path / "datm-sym40-noisy" / "buffer")


def test_the_budget_line_says_how_many_labels_were_wrong():
    rec = {"config": {"buffer": {"num_experts": 20, "epochs": 23}, "distill": {"iterations": 1000},
                      "eval": {"num_eval": 5}}, "results": {"noise_rate": 0.16}}
    assert repro.budget(rec) == ("20 experts x 23 epochs, 1000 iterations, 5 evaluation nets; 16.0% of the "
                                 "training labels wrong")
    assert "labels wrong" not in repro.budget({"config": {}})  # older records without the rate


def test_page_gives_the_best_finished_clean_run_as_the_ceiling(tmp_path):
    (tmp_path / "clean").mkdir()
    def rec(acc, experts):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.004}, "config": {"buffer": {"num_experts": experts,
                "epochs": 23}, "distill": {"iterations": 3000}, "eval": {"num_eval": 5}}}
    (tmp_path / "clean" / "mtt-clean-e20.json").write_text(json.dumps(rec(0.603, 20)))
    (tmp_path / "clean" / "mtt-clean-e100.json").write_text(json.dumps(rec(0.628, 100)))
    (tmp_path / "clean" / "mtt-clean-partial.json").write_text(json.dumps({"config": {}, "results": {}}))
    line = next(x for x in repro.page(tmp_path).splitlines() if x.startswith("Clean-label reference"))
    assert "`clean/mtt-clean-e100` 62.8 +- 0.4; 100 experts x 23 epochs, 3000 iterations, 5 evaluation nets" in line
    assert "the paper's MTT: 65.3" in line
    assert not any(x.startswith("Clean-label reference") for x in repro.page(tmp_path / "clean").splitlines())


def test_page_draws_the_pairs_only_when_a_cell_has_finished(tmp_path):
    png = tmp_path / "pairs.png"
    assert "pairs.png" not in repro.page(tmp_path) and not png.exists()  # nothing recorded yet
    rec = {"results": {"test_acc_mean": 0.55, "test_acc_std": 0.01, "test_acc_best_mean": 0.58,
                       "test_acc_best_std": 0.01, "best_iteration": 750}, "config": {}}
    (tmp_path / "att-sym40-tad.json").write_text(json.dumps(rec))
    text = repro.page(tmp_path)
    if importlib.util.find_spec("matplotlib") is None:
        assert not png.exists() and "pairs.png" not in text
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![method vs method + TAD](cifar10/pairs.png)" in text


def test_the_short_and_long_budgets_are_the_recorded_runs_and_user_sets_win(tmp_path):
    extra = repro.overrides("short", ["distill.iterations=2000"])
    cfg = config_from_args(build_parser().parse_args(repro.command("att-sym40-tad", "cifar10", tmp_path, None,
                                                                   extra)[3:]))
    assert (cfg.buffer.num_experts, cfg.buffer.epochs, cfg.distill.eval_every) == (20, 23, 250)
    assert cfg.distill.iterations == 2000  # the user's --set comes after the budget's
    full = config_from_args(build_parser().parse_args(repro.command("att-sym40-tad", "cifar10", tmp_path, None,
                                                                    repro.overrides("full", []))[3:]))
    assert full.buffer.epochs == 50 and full.distill.iterations == 60000  # ATT's own budget
    for budget, record in (("short", "att-c10n-worst-tad.json"), ("long", "sym40-noisy-e100-i5000.json")):
        rec = json.loads((repro.RESULTS / record).read_text())  # the recorded runs of that budget
        for key in repro.BUDGETS[budget]:
            section, name = key.split("=")[0].split(".")
            assert str(rec["config"][section][name]) == key.split("=")[1], (budget, key)


def test_a_tagged_variant_gets_its_own_runs_and_records(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_parallel", lambda cmds, *a, **k: seen.update(cmds=cmds, **k) or {c: 0 for c in cmds})
    monkeypatch.setattr(repro, "gpu_ids", lambda spec: [])
    monkeypatch.setattr(repro, "RESULTS", tmp_path / "results")
    args = repro.argparse.Namespace(cell=["ftd-sym40-tad", "datm-sym40-tad"], set=["tad.balance_classes=true"],
                                    dataset="d.npz", out=str(tmp_path), cifar_n=None, jobs=1, gpus=None,
                                    reuse_buffers=True, budget="short", tag="bal", seeds=[0])
    assert repro.run_cells(args) == 0
    cmds = seen["cmds"]
    assert list(cmds) == ["datm-sym40-tad-bal", "ftd-sym40-tad-bal"]
    ftd = cmds["ftd-sym40-tad-bal"]
    assert ftd[ftd.index("--out") + 1] == str(tmp_path / "ftd-sym40-tad-bal")
    assert ftd[ftd.index("--buffer") + 1] == str(tmp_path / "datm-sym40-tad-bal" / "buffer")
    assert "tad.balance_classes=true" in ftd and "distill.iterations=1000" in ftd
    (tmp_path / "ftd-sym40-tad-bal").mkdir()
    (tmp_path / "ftd-sym40-tad-bal" / "result_run.json").write_text('{"results": {}}')
    seen["on_done"]("ftd-sym40-tad-bal")  # the collection step: a record of its own, the cell's untouched
    assert (tmp_path / "results" / "ftd-sym40-tad-bal.json").read_text() == '{"results": {}}'
    assert not (tmp_path / "results" / "ftd-sym40-tad.json").exists()
    with pytest.raises(SystemExit, match="--tag"):
        repro.run_cells(repro.argparse.Namespace(**{**vars(args), "tag": "../x"}))


def test_list_says_what_a_recorded_cell_cost(tmp_path):
    assert repro.recorded_time("sym40-tad", tmp_path) == ""  # nothing recorded
    rec = {"wall_time_s": 450.0, "device": "NVIDIA H100", "results": {}, "stages": {"buffer": {"reused": "r/buffer"}},
           "config": {"buffer": {"num_experts": 20, "epochs": 23}, "distill": {"iterations": 1000},
                      "eval": {"num_eval": 5}}}
    (tmp_path / "att-sym40-tad.json").write_text(json.dumps(rec))
    line = repro.recorded_time("att-sym40-tad", tmp_path)
    assert line.startswith("  (recorded: 7.5 min on NVIDIA H100 (experts reused from another run: distillation only), "
                           "20 experts x 23 epochs, 1000 iterations")


def test_cell_all_runs_every_cell_of_the_table(monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "train_missing_extractor", lambda args: seen.update(first=list(args.cell)) or 0)
    monkeypatch.setattr(repro, "run_cells", lambda args: seen.update(cells=args.cell) or 0)
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--cell", "all", "--budget", "short"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    assert exit_.value.code == 0 and seen["cells"] == list(repro.cells()) and len(seen["cells"]) == 14
    assert seen["first"] == seen["cells"]  # the extractor step sees every cell before any runs


def test_page_gives_the_later_recalls_of_a_record_that_has_them(tmp_path):
    later = {"rounds": 2, "recalled": 10, "accuracy": 0.8, "agree": 6, "agree_accuracy": 1.0, "disagree": 4,
             "disagree_accuracy": 0.5}
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88,
                                 "later_recalls": later}}}
    (tmp_path / "sym40-tad.json").write_text(json.dumps(rec))
    assert ("  - recalls after the first round (first expert, 2 rounds): 10, 80.0% right; where the expert predicts "
            "the pseudo-label 6 (100.0% right), where it does not 4 (50.0% right)") in repro.page(tmp_path)


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
    report.save_json(tmp_path / "sym40-tad.trust_report.json")
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"trusted_fraction": 0.7, "trusted_precision": 0.9, "clean_recall": 0.88}}}
    (tmp_path / "sym40-tad.json").write_text(json.dumps(rec))
    assert "  - recalls after the first round (first expert, 1 round): 2, 50.0% right\n" in repro.page(tmp_path)


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_single_cell_runs_in_the_foreground_on_the_first_gpu_given(tmp_path, monkeypatch, capsys, exit_code):
    seen = {}

    def fake_run(cmd, env):
        seen.update(cmd=cmd, gpu=env.get("CUDA_VISIBLE_DEVICES"))
        (tmp_path / "sym40-tad-x").mkdir()
        (tmp_path / "sym40-tad-x" / "result_run.json").write_text('{"results": {}}')
        return repro.subprocess.CompletedProcess(cmd, exit_code)

    monkeypatch.setattr(repro.subprocess, "run", fake_run)
    monkeypatch.setattr(repro, "RESULTS", tmp_path / "results")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = repro.argparse.Namespace(cell=["sym40-tad"], set=[], dataset="d.npz", out=str(tmp_path), cifar_n=None,
                                    jobs=1, gpus="1,0", reuse_buffers=True, budget="short", tag="x", seeds=[0])
    assert repro.run_cells(args) == (0 if exit_code == 0 else 1)
    assert seen["gpu"] == "1" and seen["cmd"][seen["cmd"].index("--out") + 1] == str(tmp_path / "sym40-tad-x")
    record = tmp_path / "results" / "sym40-tad-x.json"
    if exit_code == 0:
        assert record.read_text() == '{"results": {}}'
    else:  # a failed run is named, and nothing is collected
        assert "FAILED sym40-tad-x (exit 3)" in capsys.readouterr().err and not record.exists()


def test_page_sets_each_mtt_tad_record_against_clean_mtt_of_the_same_budget(tmp_path):
    (tmp_path / "clean").mkdir()

    def rec(acc, experts, method="mtt", tad=True, **extra):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.004},
                "config": {"method": method, "tad": {"enabled": tad}, "buffer": {"num_experts": experts, "epochs": 23},
                           "distill": {"iterations": 1000}, "eval": {"num_eval": 5}}, **extra}
    (tmp_path / "clean" / "mtt-clean-e20.json").write_text(json.dumps(rec(0.603, 20, tad=False)))
    (tmp_path / "clean" / "mtt-clean-e40-bad.json").write_text(json.dumps(rec(0.397, 40, tad=False, note="diverged: x")))
    (tmp_path / "sym40-tad-e20.json").write_text(json.dumps(rec(0.597, 20)))
    (tmp_path / "sym40-tad.json").write_text(json.dumps(rec(0.606, 40)))  # its only clean match diverged
    (tmp_path / "sym40-noisy-e20.json").write_text(json.dumps(rec(0.543, 20, tad=False)))  # not a TAD run
    (tmp_path / "datm-sym40-tad.json").write_text(json.dumps(rec(0.607, 20, method="datm")))  # not MTT
    lines = repro.clean_gap_lines(tmp_path)
    rows = [x for x in lines if x.startswith("| `")]
    assert rows == ["| `sym40-tad-e20` | 20 experts x 23 epochs, 1000 iterations, 5 evaluation nets | 59.7 | "
                    "`clean/mtt-clean-e20` 60.3 | -0.6 | 64.6 vs 65.3: -0.7 |"]
    assert "| run | budget | MTT + TAD | clean MTT | gap | paper: TAD vs clean |" in lines
    assert repro.clean_gap_lines(tmp_path / "clean") == []


def test_more_seeds_run_as_their_own_records_and_reuse_their_own_seeds_buffer(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(repro, "run_parallel", lambda cmds, *a, **k: seen.update(cmds=cmds, **k) or {c: 0 for c in cmds})
    monkeypatch.setattr(repro, "gpu_ids", lambda spec: [])
    args = repro.argparse.Namespace(cell=["att-sym40-tad", "sym40-tad"], set=[], dataset="d.npz", out=str(tmp_path),
                                    cifar_n=None, jobs=1, gpus=None, reuse_buffers=True, budget="short", tag=None,
                                    seeds=[0, 2])
    assert repro.run_cells(args) == 0
    cmds = seen["cmds"]
    assert list(cmds) == ["sym40-tad", "att-sym40-tad", "sym40-tad-seed2", "att-sym40-tad-seed2"]
    att = cmds["att-sym40-tad-seed2"]
    assert att[att.index("--buffer") + 1] == str(tmp_path / "sym40-tad-seed2" / "buffer")
    assert att[-2:] == ["--set", "seed=2"] and "seed=0" not in " ".join(cmds["sym40-tad"])
    cfg = config_from_args(build_parser().parse_args(cmds["sym40-tad-seed2"][3:]))
    assert cfg.seed == 2 and cfg.data.noise_seed == 0  # the same noisy labels, another training seed
    assert repro.seed_tag("bal", 2) == "bal-seed2" and repro.seed_tag("bal", 0) == "bal"
    with pytest.raises(SystemExit, match="--seeds"):
        repro.run_cells(repro.argparse.Namespace(**{**vars(args), "seeds": [-1]}))


def test_the_table_averages_a_cells_finished_seeds(tmp_path):
    def record(acc):
        return {"results": {"test_acc_mean": acc, "test_acc_std": 0.005}, "config": {}}
    for name, acc in (("sym40-noisy", 0.55), ("sym40-tad", 0.62), ("sym40-tad-seed1", 0.64),
                      ("sym40-tad-seed2", 0.63), ("att-sym40-tad-seed1", 0.10)):
        (tmp_path / f"{name}.json").write_text(json.dumps(record(acc)))
    (tmp_path / "sym40-tad-seed3.json").write_text(json.dumps({"results": {}, "config": {}}))  # unfinished
    (tmp_path / "sym40-tad-seed1.trust_report.json").write_text("{}")
    row = next(x for x in repro.page(tmp_path).splitlines() if x.startswith("| sym40 |"))
    assert "| 55.0 +- 0.5 | 63.0 +- 1.0 over 3 seeds | TAD >= 63.0, >= +5.0 | yes |" in row


def test_the_page_names_tad_settings_beyond_the_papers(tmp_path):
    def record(**tad):
        return {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01},
                "config": {"tad": {"balance_classes": False, "warmup_confidence_penalty": 0.0, **tad},
                           "distill": {"label_temperature": 1.0}}}
    (tmp_path / "sym40-tad.json").write_text(json.dumps(record()))
    assert "settings the paper's TAD does not have" not in repro.page(tmp_path)
    (tmp_path / "asym40-tad.json").write_text(json.dumps(record(balance_classes=True, warmup_confidence_penalty=1.0)))
    line = next(x for x in repro.page(tmp_path).splitlines() if "settings the paper's TAD does not have" in x)
    assert line.endswith("asym40: tad.balance_classes=True, tad.warmup_confidence_penalty=1.0.")
    (tmp_path / "sym40-tad.json").write_text(json.dumps(record(loss_average=6)))
    line = next(x for x in repro.page(tmp_path).splitlines() if "settings the paper's TAD does not have" in x)
    assert "sym40: tad.loss_average=6" in line


def test_the_extractor_is_trained_first_only_when_a_tad_arm_needs_the_missing_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    default = tmp_path / "features" / "cifar10.pt"
    assert repro.extractor_to_train(["sym40-noisy", "att-sym40-noisy"], "/data/cifar10.npz", []) is None
    assert repro.extractor_to_train(["sym40-noisy", "sym40-tad"], "/data/cifar10.npz", []) == default
    assert repro.extractor_to_train(["sym40-tad"], "cifar10", ["tad.features=pixels"]) is None
    assert repro.extractor_to_train(["sym40-tad"], "cifar10", ["tad.features=null"]) == default
    mine = tmp_path / "mine.pt"
    with pytest.raises(SystemExit, match=r"tad.features=.*mine.pt: no such extractor file.*--out .*mine.pt"):
        repro.extractor_to_train(["sym40-tad"], "cifar10", [f"tad.features={mine}"])
    mine.write_bytes(b"x")
    assert repro.extractor_to_train(["sym40-tad"], "cifar10", [f"tad.features={mine}"]) is None
    default.parent.mkdir()
    default.write_bytes(b"x")
    assert repro.extractor_to_train(["sym40-tad"], "cifar10", []) is None


@pytest.mark.parametrize("state", [False, True])
def test_a_missing_extractor_is_trained_on_the_first_gpu_and_resumes(tmp_path, monkeypatch, state):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path))
    if state:
        (tmp_path / "c.state.pt").write_bytes(b"x")
    seen = []
    monkeypatch.setattr(repro.subprocess, "run",
                        lambda cmd, env: seen.append((cmd, env.get("CUDA_VISIBLE_DEVICES"))) or
                        repro.subprocess.CompletedProcess(cmd, 2))
    args = repro.argparse.Namespace(cell=["c10n-worst-tad"], set=[], dataset="/x/c.npz", gpus="3,1",
                                    features_budget=12.0)
    assert repro.train_missing_extractor(args) == 2  # a failure stops before any cell
    (cmd, gpu), = seen
    assert gpu == "3" and cmd[cmd.index("--out") + 1] == str(tmp_path / "c.pt")
    assert cmd[2:5] == ["tad_plugin.cli", "features", "train"] and cmd[cmd.index("--time-budget") + 1] == "12.0"
    assert ("--resume" in cmd) == state
    args.cell = ["c10n-worst-noisy"]
    assert repro.train_missing_extractor(args) == 0 and len(seen) == 1


def test_no_cell_runs_when_the_extractor_fails(monkeypatch):
    ran = []
    monkeypatch.setattr(repro, "train_missing_extractor", lambda args: 2)
    monkeypatch.setattr(repro, "run_cells", lambda args: ran.append(args.cell) or 0)
    monkeypatch.setattr(repro.sys, "argv", ["reproduce_cifar10.py", "--cell", "sym40-tad"])
    with pytest.raises(SystemExit) as exit_:
        repro.main()
    assert exit_.value.code == 2 and ran == []
