"""cleanlab's confident learning as a filter_dataset plugin: loaded from an entry point, it replaces TAD's
division in expert training."""

import textwrap

import pytest
import torch

from tad_plugin import TADHooks, get_plugin_manager
from tad_plugin.engine.config import BufferConfig, TADConfig
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.experts import ExpertTrainer
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.trajectories import TrajectoryStore

pytest.importorskip("cleanlab", reason="the cleanlab extra is not installed (pip install 'tad_plugin[cleanlab]')")

from tad_plugin.confident_learning import ConfidentLearning, confident_split, out_of_sample_probabilities  # noqa: E402


def noisy_digits(n=600):
    from tad_plugin.data import load_dataset
    from tad_plugin.noise import make_noisy_labels

    ds = load_dataset("digits")
    images, clean = ds.train_images[:n], ds.train_labels[:n]
    return images, clean, make_noisy_labels(clean, "symmetric", 0.3, num_classes=10, seed=0)


@pytest.fixture
def cleanlab_entry_point(tmp_path, install_distribution):
    """A user's distribution declaring confident learning in the ``tad_plugin`` entry-point group: the plugin
    module is three lines."""
    images, _, _ = noisy_digits()
    torch.save(images.flatten(1).float() / 255, tmp_path / "features.pt")
    (tmp_path / "my_cleanlab.py").write_text(textwrap.dedent(f"""
        import torch
        from tad_plugin.confident_learning import ConfidentLearning
        plugin = ConfidentLearning(features=torch.load({str(tmp_path / "features.pt")!r}), folds=3)
    """))
    install_distribution("my-cleanlab", "[tad_plugin]\ncleanlab = my_cleanlab:plugin\n")
    return "cleanlab"


def test_the_entry_point_plugin_replaces_tads_division_in_expert_training(cleanlab_entry_point, tmp_path):
    images, clean, noisy = noisy_digits()
    pm = get_plugin_manager(load_entrypoints=True)
    plugin = pm.get_plugin(cleanlab_entry_point)
    assert isinstance(plugin, ConfidentLearning)
    hooks = TADHooks(pm)
    expected = confident_split(noisy, out_of_sample_probabilities(plugin.features, noisy, 10, folds=3), 10)
    split = hooks.filter_dataset(torch.rand(len(noisy)), noisy, 10)  # the losses are not what it divides on
    assert torch.equal(split.trusted, expected.trusted)
    wrong = noisy != clean
    precision = float((wrong & ~split.trusted).sum() / (~split.trusted).sum())
    assert precision > 0.3 + 0.3  # flags mostly the wrong labels (30% of the labels are wrong)

    net = ConvNetConfig(in_channels=1, num_classes=10, image_size=(8, 8), width=8, depth=2)
    pre = Preprocessor("normalize", mean=torch.tensor([0.3]), std=torch.tensor([0.3]))
    trainer = ExpertTrainer(net, pre, BufferConfig(num_experts=2, epochs=3, batch_size=64, experts_per_group=2,
                                                   eval_batch_size=600, dsa=False),
                            TADConfig(enabled=True, warmup_epochs=1, inner_loop=False), hooks=hooks, progress=False)
    store = TrajectoryStore.create(tmp_path / "store", param_shapes=net.param_shapes, epochs=3, num_train=len(noisy),
                                   num_classes=10)
    trainer.train(store, images, noisy, images[:50], clean[:50])
    for i in store.finished():
        record = store.load_expert(i)
        assert record.trusted[0].all()  # the warm-up
        for t in (1, 2):  # every division is confident learning's, whatever the expert's losses
            assert torch.equal(record.trusted[t], expected.trusted)


def test_confident_split_contract():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    probs = torch.tensor([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 4 + [[0.05, 0.95]])
    split = confident_split(labels, probs, 2)
    assert split.trusted.tolist() == [True] * 7 + [False]  # the last one is confidently of class 1
    assert split.confidence[-1] == pytest.approx(0.05)
    assert split.thresholds.tolist() == pytest.approx([(0.9 * 3 + 0.05) / 4, 0.9])
    with pytest.raises(ValueError, match="pred_probs must be float"):
        confident_split(labels, probs[:4], 2)


def test_features_of_another_training_set_are_refused():
    plugin = ConfidentLearning(features=torch.rand(10, 3))
    with pytest.raises(ValueError, match="features of 10 samples but the training set has 12"):
        plugin.filter_dataset(torch.rand(12), torch.zeros(12, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="at least 5 samples in every labelled class"):
        out_of_sample_probabilities(torch.rand(12, 3), torch.tensor([0] * 10 + [1] * 2), 2)
