"""reproduction/two_stage_digits.py: the commands it runs, resuming, and the page from fixture records."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "reproduction" / "two_stage_digits.py"
spec = importlib.util.spec_from_file_location("two_stage_digits", SCRIPT)
tsd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tsd)


def test_pipelines_read_their_detectors_audit_of_the_same_seed(tmp_path):
    jobs = tsd.commands(tmp_path, 2)
    assert list(jobs)[:2] == ["audit-cleanlab", "audit-tad"]  # the pipelines read them: first
    assert jobs["audit-cleanlab"][:2] == ["audit", "--dataset"] and "cleanlab" in jobs["audit-cleanlab"]
    assert "--detector" not in jobs["audit-tad"] and "--write-pruned" in jobs["audit-tad"]
    audit = tmp_path / "seed2" / "audit-tad"
    assert jobs["tad-prune"][-2:] == ["--out", str(tmp_path / "seed2" / "tad-prune")]
    assert f"{audit}/pruned/digits.npz" in jobs["tad-prune"] and "--no-tad" in jobs["tad-prune"]
    assert f"{tmp_path / 'seed2' / 'audit-cleanlab'}/labels_cleaned.npz" in jobs["cleanlab-relabel"]
    for argv in jobs.values():  # every run of a seed draws the same noise
        assert argv[argv.index("--seed") + 1] == argv[argv.index("--noise-seed") + 1] == "2"
    assert "--no-tad" not in jobs["tad"] and "tad.reg_weight=0" in jobs["tad-noreg"]
    assert "data.noise=null" in jobs["clean"] and "data.noise=null" not in jobs["noisy"]


def _records(root, seeds, acc):
    for s in seeds:
        for name, value in acc.items():
            path = root / f"seed{s}" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"results": {"test_acc_mean": value + s * 0.002}}))
        for d, f1 in (("cleanlab", 0.9), ("tad", 0.95)):
            det = {"flagged": 500, "precision": f1, "recall": f1, "f1": f1, "suggested_accuracy": 0.8}
            (root / f"seed{s}" / f"audit-{d}.json").write_text(
                json.dumps({"results": {"detection": det}, "wall_time_s": 10.0 * (s + 1)}))


def test_page_tables_and_claims_from_fixture_records(tmp_path):
    acc = {"noisy": 0.90, "tad": 0.92, "clean": 0.96, "cleanlab-prune": 0.94, "cleanlab-relabel": 0.95,
           "tad-prune": 0.94, "tad-relabel": 0.95}
    _records(tmp_path, [0, 1], acc)
    text = tsd.page(tmp_path)
    assert "| pipeline | seed 0 | seed 1 | mean +- sd over seeds |" in text
    row = "| MTT + TAD, one pass | [92.00]({0}/seed0/tad.json) | [92.20]({0}/seed1/tad.json) | 92.10 +- 0.14 |"
    assert row.format(tmp_path.name) in text
    assert "without the reverse-CE" not in text  # an arm without records gets no row
    assert "| cleanlab, 5 folds | 500 | 90.0 | 90.0 | 90.0 | 80.0 | 15 |" in text
    assert "every two-stage pipeline ends above MTT + TAD in one pass: the two-stage mean is 2.5 to 2.5" in text
    assert "One pass closes 33% of the gap" in text and "Of the one-pass variants" not in text  # none recorded
    assert "initialised from noise" not in text
    _records(tmp_path, [0, 1], {"noisy-noiseinit": 0.85, "tad-noiseinit": 0.86})
    text = tsd.page(tmp_path)
    assert "+2.00 points with the images initialised from real samples" in text and "+1.00 with both" in text
    for name in [n for n in tsd.ARMS if n.startswith("tad-") and n not in acc]:  # below tad: tad is the best
        _records(tmp_path, [0, 1], {name: 0.91})
    said = "none reaches the two-stage mean on any seed: the best of them per seed ends 2.5 to 2.5 points below"
    assert said in tsd.page(tmp_path)
    _records(tmp_path, [0, 1], {"tad-warm2": 0.97})
    assert "the best of them reaches the two-stage mean on 2 of 2 seeds" in tsd.page(tmp_path)
    assert "--seed N --noise-seed N" in text and "seedN/audit-tad" in text and str(tmp_path) not in text
    (tmp_path / "seed1" / "tad-prune.json").write_text(json.dumps({"results": {"test_acc_mean": 0.5}}))
    assert "ends not always above" in tsd.page(tmp_path)


def test_a_finished_run_is_not_run_again_and_its_record_is_copied(tmp_path, monkeypatch):
    for name in tsd.commands(tmp_path / "runs", 0):
        run = tmp_path / "runs" / "seed0" / name
        run.mkdir(parents=True)
        tsd.record_of(run).write_text(json.dumps({"name": name}))
    monkeypatch.setattr(tsd.subprocess, "run", lambda *a, **k: pytest.fail("a finished run ran again"))
    tsd.run_study(tmp_path / "runs", [0], tmp_path / "results")
    assert json.loads((tmp_path / "results" / "seed0" / "tad-relabel.json").read_text()) == {"name": "tad-relabel"}
    assert json.loads((tmp_path / "results" / "seed0" / "audit-tad.json").read_text()) == {"name": "audit-tad"}


def test_page_without_records_says_what_to_run(tmp_path):
    with pytest.raises(ValueError, match="no records under .*: run the study first"):
        tsd.page(tmp_path)


def test_expert_section_sets_the_matched_epochs_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(tsd, "FIGURE", tmp_path / "experts.png")
    config = {"distill": {"max_start_epoch": 2, "expert_epochs": 1}}  # starts 0-1: segments end by epoch 2
    curves = {"noisy": [0.5, 0.6, 0.7], "tad": [0.4, 0.6, 0.9], "tad-min5": [0.4, 0.6, 0.9],  # tad's experts
              "tad-relabel": [0.8, 0.9, 0.95]}
    recs = {s: {n: {"config": config, "stages": {"buffer": {"expert_test_acc": c}}} for n, c in curves.items()}
            for s in (0, 1)}
    text = "\n".join(tsd.expert_section(recs, [0, 1]))
    assert "| pipeline | epoch 1* | epoch 3 | mean over epochs 1-2 |" in text  # epochs 1-2 matched, 3 shown
    assert "| MTT + TAD, one pass | 40.0 | 90.0 | 50.0 |" in text and "warm-up (epoch 5)" not in text
    assert "one-pass TAD's experts average 50.0%, against 55.0% for the noisy experts and 85.0%" in text
    if (tmp_path / "experts.png").is_file():  # with matplotlib
        assert (tmp_path / "experts.png").read_bytes()[:4] == b"\x89PNG"
    del recs[1]["tad"]  # a curve missing on one seed: no row
    assert "one pass" not in "\n".join(tsd.expert_section(recs, [0, 1]))


def test_a_record_without_the_expert_curve_gets_it_from_its_buffer(tmp_path):
    from tad_plugin.engine.trajectories import ExpertRecord, TrajectoryStore

    run = tmp_path / "tad"
    store = TrajectoryStore.create(run / "buffer", param_shapes=[(2,)], epochs=2, num_train=3, num_classes=2,
                                   meta={})
    for i, acc in enumerate(([0.5, 0.7], [0.7, 0.9])):
        store.save_expert(ExpertRecord(i, torch.zeros(3, 2), torch.tensor(acc), torch.zeros(2), None, None,
                                       torch.zeros(1, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.int64), i))
    (run / "result_run.json").write_text(json.dumps({"stages": {"buffer": {"experts": 2}}}))
    stage = tsd.with_expert_curve(run / "result_run.json")["stages"]["buffer"]
    assert stage["expert_test_acc"] == [0.6, 0.8] and "afterwards" in stage["expert_test_acc_added"]
    (run / "result_run.json").write_text(json.dumps({"stages": {"buffer": {"expert_test_acc": [0.1, 0.2]}}}))
    assert tsd.with_expert_curve(run / "result_run.json")["stages"]["buffer"] == {"expert_test_acc": [0.1, 0.2]}
