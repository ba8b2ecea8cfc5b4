"""The run figures: distilled images as a grid, and the distillation curve."""

import pytest
import torch

from tad_plugin.data import load_dataset
from tad_plugin.engine import figures
from tad_plugin.engine.matching import DistillResult
from tad_plugin.engine.preprocess import Preprocessor

pytest.importorskip("matplotlib")


def _images(n_classes=3, ipc=4):
    ds = load_dataset("digits")
    pre = Preprocessor.for_dataset(ds)
    idx = torch.cat([torch.nonzero(ds.train_labels == c).flatten()[:ipc] for c in range(n_classes)])
    return pre(ds.train_images[idx]), ds.train_labels[idx], pre, ds.class_names


def test_the_grid_draws_a_row_per_class_from_hard_or_soft_labels(tmp_path, monkeypatch):
    images, labels, pre, names = _images()
    shown = []
    real = pre.to_unit
    monkeypatch.setattr(pre, "to_unit", lambda x: shown.append(x) or real(x))
    figures.save_image_grid(images, labels, pre, tmp_path / "grid.png", names)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    torch.testing.assert_close(shown[0], images)  # drawn back in pixel space, through the run's preprocessor
    soft = torch.nn.functional.one_hot(labels, 10).float() * 5  # DATM's logits: a row's class is the argmax
    figures.save_image_grid(images, soft, pre, tmp_path / "soft.png", names)
    assert (tmp_path / "soft.png").stat().st_size > 0
    with pytest.raises(ValueError, match="labels must be"):
        figures.save_image_grid(images, labels[:-1], pre, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="float"):
        figures.save_image_grid(images.to(torch.uint8), labels, pre, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_the_curve_needs_evaluations_and_draws_the_ema_too(tmp_path):
    images, labels, _, _ = _images()
    result = DistillResult(images, labels, 0.01, history=[{"iteration": 0, "loss": 1.0}])
    assert figures.save_curve(result, tmp_path / "none.png") is False and not (tmp_path / "none.png").exists()
    ev = {"mean": 0.5, "std": 0.01}
    result.history += [{"iteration": i, "syn_lr": 0.01 * (i + 1), "eval": ev, "eval_ema": ev} for i in (0, 5, 10)]
    result.best = {"iteration": 5, "mean": 0.5, "std": 0.01, "which": "images"}
    assert figures.save_curve(result, tmp_path / "curve.png") is True
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
