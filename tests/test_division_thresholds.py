"""reproduction/division_thresholds.py: the statistics of a trusted mask, and the comparison on a finished run."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "reproduction" / "division_thresholds.py"
spec = importlib.util.spec_from_file_location("division_thresholds", SCRIPT)
dt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dt)


def test_division_stats_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clean = torch.tensor([0, 0, 1, 1, 1, 0])  # samples 2 and 5 mislabelled
    trusted = torch.tensor([True, False, True, True, True, False])
    s = dt.division_stats(trusted, labels, clean, 3)
    assert s["trusted"] == 4
    assert s["precision"] == 0.75  # 3 of the 4 trusted are right
    assert s["recall"] == 0.75  # 3 of the 4 right ones are trusted
    assert s["clean_recall_per_class"] == [0.5, 1.0, None]  # class 2 has no correctly labelled sample


def test_compare_on_a_finished_tad_run(quick_demo, tmp_path, capsys):
    out = tmp_path / "division.json"
    dt.main(["--run", str(quick_demo / "tad"), "--dataset", "digits", "--experts", "1", "--device", "cpu",
             "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result) == ["0"]
    res = result["0"]
    tau = torch.tensor(res["class_mean_tau"])
    assert len(tau) == 10 and bool(((tau > 0) & (tau <= 1)).all())
    for rule in dt.RULES:
        s = res[rule]
        assert 0 < s["trusted"] <= 1797 and 0.5 < s["precision"] <= 1 and 0 < s["recall"] <= 1
    # min(class mean, 0.5) never trusts fewer than either of the other two rules
    assert res["min(class mean, 0.5)"]["trusted"] >= max(res["global 0.5"]["trusted"],
                                                          res["class mean (Eq. 5)"]["trusted"])
    assert "| 0 | global 0.5 |" in capsys.readouterr().out


def test_a_folder_without_labels_is_named(tmp_path, quick_demo):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_demo / "tad" / "buffer", run / "buffer")
    with pytest.raises(FileNotFoundError, match="labels.pt is missing"):
        dt.compare(run, 1, "digits", torch.device("cpu"))


def test_a_run_without_tad_is_named(quick_demo):
    with pytest.raises(ValueError, match="trained without TAD"):
        dt.compare(quick_demo / "noisy", 1, "digits", torch.device("cpu"))


def test_losses_averaged_over_the_last_epochs_divide_too(quick_demo):
    res = dt.compare(quick_demo / "tad", 1, "digits", torch.device("cpu"), average=(3,))["0"]
    s = res[dt.averaged_rule(3)]
    assert 0 < s["trusted"] <= 1797 and 0.5 < s["precision"] <= 1 and 0 < s["recall"] <= 1
    # a different loss, so (on this run) a different split than the last epoch's alone
    assert s != res["class mean (Eq. 5)"]
    assert "last 3 epochs" in dt.table({"0": res})


@pytest.mark.parametrize("average, match", [((1,), "counts >= 2"), ((99,), "only .* parameter snapshots")])
def test_bad_averages_are_named(quick_demo, average, match):
    with pytest.raises(ValueError, match=match):
        dt.compare(quick_demo / "tad", 1, "digits", torch.device("cpu"), average=average)
