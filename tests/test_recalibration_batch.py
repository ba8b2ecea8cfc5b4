"""The batched recalibration (all experts of a group at once) gives exactly the per-expert results."""

import pytest
import torch

from tad_plugin import HookError, TADHooks, get_plugin_manager, hookimpl
from tad_plugin.data import load_dataset
from tad_plugin.noise import make_noisy_labels
from tad_plugin.recalibration import recalibrate_batch_with_anchors, recalibrate_with_anchors
from tad_plugin.results import Recalibration
from tad_plugin.search import faiss_available

BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(),
                                                                  reason="faiss not installed"))]


def _experts(clean: torch.Tensor, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three experts' labels [3, N] (20%, 40%, 30% symmetric noise) and trusted spaces [3, N]: mostly the
    clean-labelled samples, a few noisy ones slipped in, at different rates per expert."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([make_noisy_labels(clean, "symmetric", rate, num_classes=num_classes, seed=seed + i)
                          for i, rate in enumerate((0.2, 0.4, 0.3))])
    right = labels == clean
    keep = torch.rand(labels.shape, generator=g) < torch.tensor([[0.8], [0.6], [0.9]])
    slip = torch.rand(labels.shape, generator=g) < 0.05
    return labels, (right & keep) | (~right & slip)


def _assert_identical(features, labels, trusted, anchors, anchor_labels, num_classes, **kw) -> list[Recalibration]:
    batch = recalibrate_batch_with_anchors(features, labels, trusted, anchors, anchor_labels, num_classes, **kw)
    assert len(batch) == labels.shape[0]
    for e, got in enumerate(batch):
        want = recalibrate_with_anchors(features, labels[e], trusted[e], anchors, anchor_labels, num_classes, **kw)
        assert torch.equal(got.labels, want.labels), e
        assert torch.equal(got.trusted, want.trusted), e
        assert torch.equal(got.reliability.isnan(), want.reliability.isnan()), e
        assert torch.equal(got.reliability.nan_to_num(-1.0), want.reliability.nan_to_num(-1.0)), e
    return batch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["calibrated", "fixed"])
def test_batch_equals_per_expert_on_clustered_features(backend, rule):
    g = torch.Generator().manual_seed(0)
    n, d, c = 1500, 24, 5
    clean = torch.randint(0, c, (n,), generator=g)
    centres = torch.randn(c, d, generator=g)
    features = centres[clean] + 0.7 * torch.randn(n, d, generator=g)
    anchor_labels = torch.arange(c).repeat_interleave(4)
    anchors = centres[anchor_labels] + 0.3 * torch.randn(len(anchor_labels), d, generator=g)
    labels, trusted = _experts(clean, c, seed=1)
    batch = _assert_identical(features, labels, trusted, anchors, anchor_labels, c, top_k=40, num_neighbors=10,
                              vote_threshold=rule, backend=backend)
    for e in range(3):  # each expert recalled and relabelled samples of its own
        assert bool((batch[e].trusted & ~trusted[e]).any()) and bool((batch[e].labels != labels[e]).any())
    assert not torch.equal(batch[0].labels, batch[1].labels)


def test_batch_equals_per_expert_on_digits_pixels():
    ds = load_dataset("digits")
    clean = ds.train_labels
    pixels = ds.train_images.float().flatten(1) / 255
    labels, trusted = _experts(clean, 10, seed=3)
    anchors = torch.cat([torch.nonzero(trusted[0] & (labels[0] == k)).flatten()[:5] for k in range(10)])
    batch = _assert_identical(pixels, labels, trusted, pixels[anchors], labels[0, anchors], 10)
    assert all(bool((r.trusted & ~t).any()) for r, t in zip(batch, trusted))


def test_batch_handles_an_expert_without_trusted_samples_and_bad_shapes():
    g = torch.Generator().manual_seed(2)
    features, anchors = torch.randn(90, 6, generator=g), torch.randn(9, 6, generator=g)
    anchor_labels = torch.arange(9) % 3
    labels = torch.randint(0, 3, (2, 90), generator=g)
    trusted = torch.stack([torch.rand(90, generator=g) < 0.6, torch.zeros(90, dtype=torch.bool)])
    batch = _assert_identical(features, labels, trusted, anchors, anchor_labels, 3, top_k=10, num_neighbors=5)
    assert torch.equal(batch[1].labels, labels[1]) and bool(batch[1].reliability.isnan().all())
    with pytest.raises(ValueError, match=r"\[E, N\]"):
        recalibrate_batch_with_anchors(features, labels[0], trusted[0], anchors, anchor_labels, 3)


def test_hooks_batch_only_where_every_recalibrating_plugin_implements_it():
    g = torch.Generator().manual_seed(4)
    features, anchors = torch.randn(60, 5, generator=g), torch.randn(9, 5, generator=g)
    anchor_labels = torch.arange(9) % 3
    labels = torch.randint(0, 3, (3, 60), generator=g)
    trusted = torch.stack([labels[0] != 0, labels[0] != 0, labels[2] != 1])
    labels[1] = labels[0]  # expert 1 as expert 0
    pm = get_plugin_manager(load_entrypoints=False)
    tad_rows = TADHooks(pm).recalibrate_batch(features, labels, trusted, anchors, anchor_labels, 3)
    tad = pm.get_plugin("tad")
    for e, row in enumerate(tad_rows):
        assert torch.equal(row.labels, tad.recalibrate(features, labels[e], trusted[e], anchors, anchor_labels,
                                                       3).labels)

    class PerExpertOnly:
        calls = 0

        @hookimpl
        def recalibrate(self, labels, trusted):
            PerExpertOnly.calls += 1
            return Recalibration(labels=torch.zeros_like(labels), trusted=trusted.clone(),
                                 reliability=torch.ones(labels.shape[0]))

    pm.register(PerExpertOnly())
    rows = TADHooks(pm).recalibrate_batch(features, labels, trusted, anchors, anchor_labels, 3)
    assert PerExpertOnly.calls == 2  # it decides every row; expert 1 reuses expert 0's result
    assert all(not bool(r.labels.any()) for r in rows)

    class Wrong:
        @hookimpl
        def recalibrate_batch(self, labels):
            return [None] * labels.shape[0]

        @hookimpl
        def recalibrate(self):
            return None

    pm2 = get_plugin_manager(load_entrypoints=False)
    pm2.register(Wrong())
    with pytest.raises(HookError, match="sequence of 3 Recalibration"):
        TADHooks(pm2).recalibrate_batch(features, labels, trusted, anchors, anchor_labels, 3)
