"""The results page of the CIFAR-10 grid (tad_plugin.reproduce.tables) and the record pages it links
(tad_plugin.reproduce.pages), generated from records."""

import importlib.util
import json
import re
from pathlib import Path

from tad_plugin.reproduce import grid, tables
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


def test_the_page_shows_the_two_stage_cells_beside_the_noisy_and_tad_ones(tmp_path):
    for arm, acc in (("noisy", 0.50), ("prune", 0.53), ("relabel", 0.52), ("tad", 0.56)):
        (tmp_path / f"mtt-ipc10-sym40-{arm}.json").write_text(json.dumps(
            {"config": {"buffer": {"num_experts": 20}, "distill": {"iterations": 1000}},
             "results": {"test_acc_mean": acc, "test_acc_std": 0.01}}))
    lines = tables.two_stage_lines(tmp_path)
    row = next(line for line in lines if line.startswith("| 10 | sym40 |"))
    assert "[50.0](" in row and "[53.0](" in row and "(+3.0)" in row and "(+2.0)" in row and "(+6.0)" in row
    assert next(line for line in lines if line.startswith("| 50 | sym20 |")).count("not run") == 6
    assert row.count("not run") == 2  # TAD's audit pipelines not run yet: marked so
    assert tables.tad_audit_lines(tmp_path) == ["- not measured yet"]
    text = tables.page(tmp_path)
    assert "### Two-stage baselines" in text and "(c) TAD audit prune, then MTT" in text
    assert "TAD at least as good as both cleanlab pipelines in every cell (the paper: TAD above C2D and " \
           "L2B-DivideMix): 1 of 1 measured hold; 3 not measured yet" in text
    assert tables.cell_words(grid.cells()["mtt-ipc10-sym40-prune"]).startswith("two-stage baseline: cleanlab prunes")
    assert tables.cell_words(grid.cells()["mtt-ipc10-sym40-tadrelabel"]).startswith(
        "two-stage baseline: TAD's audit relabels")
    # TAD's audit pipelines measured: in the table, and set against one-pass TAD and cleanlab's of the same kind
    for arm, acc in (("tadprune", 0.575), ("tadrelabel", 0.51)):
        (tmp_path / f"mtt-ipc10-sym40-{arm}.json").write_text(json.dumps(
            {"config": {"buffer": {"num_experts": 20}, "distill": {"iterations": 1000}},
             "results": {"test_acc_mean": acc, "test_acc_std": 0.01}}))
    row = next(line for line in tables.two_stage_lines(tmp_path) if line.startswith("| 10 | sym40 |"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert [re.sub(r"\]\([^)]*\)", "]", c) for c in cols[2:]] == [
        "[50.0]", "[53.0] (+3.0)", "[52.0] (+2.0)", "[57.5] (+7.5)", "[51.0] (+1.0)", "[56.0] (+6.0)"]
    assert tables.tad_audit_lines(tmp_path) == [
        "- IPC 10, sym40: TAD's audit, then MTT: prune 57.5 / relabel 51.0; against MTT + TAD in one pass (56.0): "
        "+1.5 / -5.0; against cleanlab's pipeline of the same kind (prune 53.0 / relabel 52.0): +4.5 / -1.0; best of "
        "the measured: (c) TAD audit prune, then MTT (57.5)"]
    text = tables.page(tmp_path)  # the paper's claim still sets one-pass TAD against cleanlab's pipelines only
    assert "L2B-DivideMix): 1 of 1 measured hold; 3 not measured yet" in text
    assert "- IPC 10, sym40: TAD's audit, then MTT: prune 57.5" in text


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
    assert "## GPU batches" not in text
    (tmp_path / "batches").mkdir()
    (tmp_path / "batches" / "b1.md").write_text("# A batch on one H100\n\ntext\n")
    assert "- [`cifar10/batches/b1.md`](cifar10/batches/b1.md): A batch on one H100" in tables.page(tmp_path)
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


def test_the_detail_page_says_where_the_time_went(tmp_path):
    phases = {"trust loop": {"seconds": 30.0, "calls": 23}, "train": {"seconds": 60.0, "calls": 23},
              "test": {"seconds": 5.0, "calls": 23}, "loss pass": {"seconds": 8.0, "calls": 13},
              "features": {"seconds": 12.0, "calls": 5}, "anchors": {"seconds": 6.0, "calls": 5}}
    evals = [{"iteration": i, "mean": 0.5, "std": 0.01, "seconds": 10.0} for i in (0, 500, 1000)]
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01}, "config": {},
           "stages": {"buffer": {"phases": phases}, "distill": {"wall_time_s": 200.0, "evaluations": evals}}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec))
    text = detail(tmp_path, "mtt-ipc10-sym40-tad")
    assert "| experts | training steps | 60.0 | 23 | 63.2% |" in text  # of 95 s: train, test, trust loop
    assert "| experts | TAD: division and recalibration (the rest of the trust loop) | 4.0 | 23 | 4.2% |" in text
    assert "| experts | TAD: anchors (distilled from each group's early trajectory) | 6.0 | 5 | 6.3% |" in text
    assert "| distillation | matching iterations (and checkpoints) | 170.0 | - | 85.0% |" in text
    assert "| distillation | evaluations | 30.0 | 3 | 15.0% |" in text
    (tmp_path / "mtt-ipc10-sym40-noisy.json").write_text(json.dumps({"results": {}, "config": {}}))
    assert "## Where the time went" not in detail(tmp_path, "mtt-ipc10-sym40-noisy")  # older records: no section
    idle = {p: phases[p] for p in ("train", "test", "trust loop")}  # a noisy buffer that timed its idle trust loop
    noisy = {**rec, "config": {"tad": {"enabled": False}}, "stages": {**rec["stages"], "buffer": {"phases": idle}}}
    (tmp_path / "mtt-ipc10-sym40-noisy.json").write_text(json.dumps(noisy))
    text = detail(tmp_path, "mtt-ipc10-sym40-noisy")
    assert "| experts | training steps | 60.0 | 23 |" in text and "TAD:" not in text


def test_the_detail_page_shows_the_experts_along_their_training(tmp_path):
    rec = {"results": {"test_acc_mean": 0.6, "test_acc_std": 0.01},
           "config": {"distill": {"max_start_epoch": 2, "expert_epochs": 1}},  # starts 0-1, targets up to 2
           "stages": {"buffer": {"expert_test_acc": [0.5, 0.625, 0.75]}}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(rec))
    text = detail(tmp_path, "mtt-ipc10-sym40-tad")
    assert "distillation matches their parameters from epoch 0 to 2 (marked *)" in text
    assert "| epoch | 1* | 2* | 3 |\n| --- | ---: | ---: | ---: |\n| accuracy | 50.0 | 62.5 | 75.0 |" in text
    (tmp_path / "mtt-ipc10-sym40-noisy.json").write_text(json.dumps({"results": {}, "config": {}}))
    assert "## Experts" not in detail(tmp_path, "mtt-ipc10-sym40-noisy")  # older records: no section


def test_a_variant_names_the_settings_of_the_experiment_not_the_speed_route():
    """Two records that differ in how the step is computed (same values) and in one real setting: only the latter
    is a variant; a key the older record lacks is not either."""
    old = {"config": {"distill": {"lr_img": 100.0, "recompute_steps": True, "inner_grad": "compiled"}}}
    new = {"config": {"distill": {"lr_img": 1000.0, "recompute_steps": "elementwise", "inner_grad": "compiled",
                                  "cudnn_benchmark": True}}}
    assert results_pages.varies(new, old) == ["distill.lr_img=1000.0"]
    later = {"config": {"distill": {**new["config"]["distill"], "lr_img": 100.0, "cudnn_benchmark": False}}}
    assert results_pages.varies(later, new) == ["distill.lr_img=100.0"]
