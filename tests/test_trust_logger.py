"""examples/trust_logger.py: a user's listener plugin logs every round of the trust loop from the notification
hooks (CSV when TensorBoard is not installed)."""

import csv
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "examples" / "trust_logger.py"


@pytest.fixture(scope="module")
def trust_logger(load_script):
    return load_script(SCRIPT)


def test_the_logger_records_every_division_and_recalibration(trust_logger, tmp_path, monkeypatch):
    monkeypatch.setattr(trust_logger.TrustLogger.__init__, "__defaults__", (None, False))  # CSV even with TB
    assert trust_logger.main(["--out", str(tmp_path), "--epochs", "6"]) == 0
    rows = list(csv.DictReader((tmp_path / "trust_log.csv").open()))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [
        ("division", 2), ("division", 3), ("division", 4), ("recalibration", 4), ("division", 5),
        ("recalibration", 5)]  # the schedule: warm-up 2, anchors from epoch 4
    assert {r["expert"] for r in rows} == {"0"}
    assert all(0 < int(r["trusted"]) < 1293 and float(r["precision"]) > 0.9 for r in rows)  # 60% of labels right


def test_the_logger_without_clean_labels_logs_sizes_only(trust_logger, tmp_path):
    logger = trust_logger.TrustLogger(tmp_path, tensorboard=False)
    trusted = torch.tensor([True, False, True])
    logger.on_division(expert=3, epoch=2, labels=torch.tensor([0, 1, 2]), trusted=trusted)
    rows = list(csv.DictReader((tmp_path / "trust_log.csv").open()))
    assert rows == [{"stage": "division", "expert": "3", "epoch": "2", "trusted": "2", "precision": ""}]
