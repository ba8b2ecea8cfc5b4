"""Evaluation protocol: nets trained together on a small real subset beat chance; labels are checked."""

import pytest
import torch
import torch.nn.functional as F

from tad_plugin.data import load_dataset
from tad_plugin.engine.convnet import ConvNetConfig, init_params
from tad_plugin.engine.evaluate import EvalResult, Evaluator, measure_accuracy, train_synthetic
from tad_plugin.engine.preprocess import Preprocessor


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    pre = Preprocessor.for_dataset(ds)
    idx = torch.cat([torch.nonzero(ds.train_labels == c).flatten()[:5] for c in range(10)])
    net = ConvNetConfig(1, 10, (8, 8), width=16)
    return net, pre(ds.train_images[idx]), ds.train_labels[idx], pre(ds.test_images), ds.test_labels


@pytest.mark.parametrize("soft", [False, True])
def test_trained_nets_beat_chance(digits, soft):
    net, x, y, test_x, test_y = digits
    labels = F.one_hot(y, 10).float() * 5 if soft else y
    ev = Evaluator(net, test_x, test_y, num_nets=3, epochs=100, progress=False, seed=1)
    result = ev(x, labels, 0.03)
    assert len(result.accuracies) == 3
    assert result.mean > 0.3  # chance is 0.1
    untrained = measure_accuracy(net, init_params(net, 3, generator=torch.Generator().manual_seed(0)), test_x, test_y)
    assert result.mean > float(untrained.mean()) + 0.1


def test_result_statistics():
    r = EvalResult((0.5, 0.7), 1.0)
    assert r.mean == pytest.approx(0.6) and r.std == pytest.approx(0.1)
    assert r.as_dict()["accuracies"] == [0.5, 0.7]


def test_bad_inputs_are_explained(digits):
    net, x, y, test_x, test_y = digits
    with pytest.raises(ValueError, match="positive number"):
        train_synthetic(net, x, y, float("nan"))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        train_synthetic(net, x, y + 5, 0.01)
    with pytest.raises(ValueError, match="soft logits"):
        train_synthetic(net, x, y[:3], 0.01)
    with pytest.raises(ValueError, match="apply the Preprocessor"):
        Evaluator(net, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), test_y[:4])
