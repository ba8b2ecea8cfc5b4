"""The Python API refuses input it would misread: each case here once gave a silent wrong result (a broadcast, a
truthy string, a reshaped tensor, NaN settings) or a traceback from deep inside torch."""

import pytest
import torch

from tad_plugin import Schedule, TADHooks, TrustLoop
from tad_plugin.data import ImageDataset, save_arrays
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.matching import real_init_indices
from tad_plugin.hookspecs import hookimpl
from tad_plugin.manager import get_plugin_manager
from tad_plugin.results import Recalibration
from tad_plugin.search import cosine_topk
from tad_plugin.tad import TrustAwareDiversion
from tad_plugin.trust_loop import TrustLoopError
from tad_plugin.trust_report import TrustReportListener

N, C = 30, 3
LABELS = torch.arange(N) % C


def _loop(**schedule):
    return TrustLoop(TADHooks(), Schedule(**{"warmup_epochs": 0, "inner_loop": False, **schedule}), LABELS, C)


@pytest.mark.parametrize("kwargs, message", [
    ({"reg_weight": float("nan")}, "reg_weight must be a finite number >= 0"),
    ({"log_zero": float("nan")}, "log_zero must be a finite negative number"),
    ({"gmm_random_state": -1}, r"gmm_random_state must be an integer in \[0, 2\*\*32\)"),
])
def test_tad_settings_that_would_poison_every_loss_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrustAwareDiversion(**kwargs)


def test_a_loss_pass_returning_logits_as_predictions_is_refused():
    loop = _loop()
    logits = torch.randn(N, C)
    with pytest.raises(TrustLoopError, match=r"predictions must be the argmax classes, int64 \[1, 30\].*argmax"):
        loop.before_epoch(0, lambda back: (torch.rand(N), logits))
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
        loop.before_epoch(0, lambda back: (torch.rand(N), torch.full((N,), 7)))
    with pytest.raises(TrustLoopError, match="returned a tuple of 1"):
        loop.before_epoch(0, lambda back: (torch.rand(N),))


def test_averaged_losses_of_another_shape_are_not_broadcast():
    loop = _loop(loss_average=2)
    with pytest.raises(TrustLoopError, match=r"returned \(1,\) for the parameters 1 epoch\(s\) back but \(30,\)"):
        loop.before_epoch(1, lambda back: torch.rand(N) if back == 0 else torch.rand(1))


def test_update_keeps_its_own_copy_and_refuses_an_empty_trusted_space():
    loop = _loop()
    mine = torch.ones(1, N, dtype=torch.bool)
    loop.update(trusted=mine, epoch=0)
    mine[0, :10] = False
    assert int(loop.trusted.sum()) == N  # the caller's later change is not the loop's
    with pytest.raises(TrustLoopError, match="expert 0: the trusted space is empty before epoch 0"):
        loop.update(trusted=torch.zeros(1, N, dtype=torch.bool), epoch=0)
    with pytest.raises(TrustLoopError, match="update's labels must be a torch.Tensor, got ndarray"):
        loop.update(LABELS[None].numpy(), epoch=0)


def test_an_anchor_source_of_the_wrong_shape_and_a_recalibration_of_the_wrong_size_are_named():
    loop = TrustLoop(TADHooks(), Schedule(warmup_epochs=0, anchor_epoch=0), LABELS, C)
    features = torch.randn(N, 4)
    with pytest.raises(TrustLoopError, match="anchor source must return .* got Tensor"):
        loop.before_epoch(0, lambda back: torch.rand(N), lambda: features, lambda lp: features[:6])

    class Short:  # a plugin whose recalibration drops the last sample
        @hookimpl
        def recalibrate(self, features, labels, trusted, anchor_features, anchor_labels, num_classes):
            return Recalibration(labels[:-1], trusted[:-1], torch.zeros(N - 1))

    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Short())
    loop = TrustLoop(TADHooks(pm), Schedule(warmup_epochs=0, anchor_epoch=0), LABELS, C)
    anchors = (features[:6], torch.arange(6) % C)
    with pytest.raises(TrustLoopError, match=r"recalibrate returned labels \(29,\) .* for expert 0; the contract is"):
        loop.before_epoch(0, lambda back: torch.rand(N), lambda: features, lambda lp: anchors)


@pytest.mark.parametrize("make, error, message", [
    (lambda: Schedule(outer_loop="no"), ValueError, "Schedule.outer_loop must be True or False, got 'no'"),
    (lambda: Schedule(recall_once=2), ValueError, "Schedule.recall_once must be True or False"),
    (lambda: TrustLoop(TADHooks(), None, LABELS, C), TypeError, "schedule must be a Schedule"),
    (lambda: TrustLoop(TADHooks(), Schedule(), LABELS, 3.0), ValueError, "num_classes must be an integer >= 2"),
    (lambda: ConvNetConfig(2.5, 10, (8, 8)), ValueError, "in_channels must be an integer >= 1, got 2.5"),
    (lambda: ConvNetConfig(3, 10, (8.7, 8.2)), ValueError, r"image_size must be \(height, width\), integers"),
])
def test_settings_of_the_wrong_type_are_refused_not_truncated_or_taken_as_true(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_trust_report_listener_refuses_labels_that_would_broadcast():
    with pytest.raises(ValueError, match=r"clean_labels \(1,\) and noisy_labels \(30,\) differ in length"):
        TrustReportListener(LABELS, LABELS[:1])
    with pytest.raises(TypeError, match="noisy_labels must be an int64 torch.Tensor"):
        TrustReportListener(LABELS.numpy())
    listener = TrustReportListener(LABELS[:10])
    with pytest.raises(ValueError, match="built for 10 samples, but expert 0's labels hold 30"):
        listener.on_division(expert=0, epoch=0, labels=LABELS, trusted=torch.ones(N, dtype=torch.bool))


def test_non_finite_inputs_to_the_search_and_to_confident_learning_are_refused():
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="queries contains NaN/inf"):
        cosine_topk(x * float("nan"), x, 2)
    with pytest.raises(ValueError, match="queries has no feature dimensions"):
        cosine_topk(torch.randn(5, 0), torch.randn(5, 0), 2)
    from tad_plugin.confident_learning import confident_split

    probs = torch.full((N, C), 1 / C)
    with pytest.raises(ValueError, match="pred_probs holds NaN, inf or negative values"):
        confident_split(LABELS, probs * float("nan"), C)


def test_channels_last_images_are_named_not_read_as_channels():
    y = torch.arange(6) % 2
    with pytest.raises(Exception, match=r"look channels-last .*images.permute\(0, 3, 1, 2\)"):
        ImageDataset("x", torch.zeros(6, 8, 8, 3, dtype=torch.uint8), y, torch.zeros(6, 8, 8, 3, dtype=torch.uint8),
                     y, ("a", "b"))


def test_arrays_files_that_would_not_load_back_are_not_written(tmp_path):
    y = torch.arange(4) % 2
    ds = ImageDataset("x", torch.zeros(4, 1, 8, 8, dtype=torch.uint8), y, torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                      torch.zeros(0, dtype=torch.int64), ("a", "b"))
    with pytest.raises(ValueError, match="needs both sets non-empty"):
        save_arrays(ds, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="needs the .npz suffix"):
        save_arrays(ds, tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_a_real_initialisation_pool_is_indices_each_given_once():
    with pytest.raises(ValueError, match=r"pool must be int64 indices \[P\] \(a mask\? give mask.nonzero"):
        real_init_indices(LABELS, torch.ones(N, dtype=torch.bool), 1, C)
    with pytest.raises(ValueError, match="pool holds repeated indices"):
        real_init_indices(LABELS, torch.tensor([0, 0, 1, 1, 2, 2]), 1, C)
    assert real_init_indices(LABELS, torch.arange(N), 2, C).shape == (6,)


def test_a_feature_module_must_return_a_row_per_image():
    from tad_plugin.features.extractor import FeatureExtractor

    class OneRow(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:1]

    with pytest.raises(TypeError, match=r"one feature row per image, a tensor \[4, D\] for 4 images, got \(1, 64\)"):
        FeatureExtractor(OneRow(), in_channels=1).embed(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="normalize must be .* finite"):
        FeatureExtractor(OneRow(), normalize=([float("nan")], [0.5]))


def test_settings_given_as_numpy_integers_or_a_mapping_are_read_and_bad_seeds_named():
    import numpy as np

    from tad_plugin.division import divide_by_loss
    from tad_plugin.recalibration import calibrated_threshold
    from tad_plugin.trust_loop import class_chunk_anchors

    assert Schedule(warmup_epochs=np.int64(2)).warmup_epochs == 2
    assert Schedule.of({"warmup_epochs": 3, "inner_loop": False}) == Schedule(warmup_epochs=3, inner_loop=False)
    with pytest.raises(ValueError, match=r"random_state must be an integer in \[0, 2\*\*32\)"):
        divide_by_loss(torch.rand(N), LABELS, C, random_state=-1)
    with pytest.raises(ValueError, match=r"quantile must lie in \[0, 1\]"):
        calibrated_threshold(torch.full((N, C), 1 / C), LABELS, torch.ones(N, dtype=torch.bool), 2.0)
    trusted, gen = torch.ones(N, dtype=torch.bool), torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="per_class must be an integer >= 1"):
        class_chunk_anchors(torch.randn(N, 4), LABELS, trusted, C, 2.5, gen)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        class_chunk_anchors(torch.randn(N, 4), LABELS, trusted, C, 2, 0)


def test_audit_tables_low_level_fits_and_empty_inputs_are_refused_with_their_conditions(tmp_path):
    from tad_plugin.data import channel_stats
    from tad_plugin.division import low_loss_posterior
    from tad_plugin.engine.audit import AuditTable, write_audit
    from tad_plugin.trust_loop import expert_criterion

    given, issue, f = torch.tensor([0, 1, 2, 0]), torch.tensor([False, True, False, False]), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="AuditTable.given holds the negative class -1"):
        AuditTable(torch.tensor([0, -1, 2, 0]), given, issue, f, f, f, f)
    with pytest.raises(ValueError, match="AuditTable.score holds NaN or inf"):
        AuditTable(given, given, issue, f, f, f, f * float("nan"))
    with pytest.raises(ValueError, match="AuditTable holds no samples"):
        AuditTable(given[:0], given[:0], issue[:0], f[:0], f[:0], f[:0], f[:0])
    with pytest.raises(ValueError, match="1 class names for labels up to 2: give one name per class"):
        write_audit(AuditTable(given, given, issue, f, f, f, f), tmp_path / "audit", class_names=["a"])
    assert not (tmp_path / "audit").exists()
    for x in (torch.tensor([0.3], dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)):
        with pytest.raises(ValueError, match="low_loss_posterior needs"):
            low_loss_posterior(x, random_state=0, max_iter=10, tol=1e-3, reg_covar=1e-6)
    with pytest.raises(ValueError, match=r"channel_stats needs images \[N >= 1, C, H, W\]"):
        channel_stats(torch.zeros(0, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        expert_criterion(None)(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))


@pytest.mark.parametrize("call, where", [
    (lambda: __import__("tad_plugin.division", fromlist=["x"]).divide_by_loss_batch(
        torch.rand(1, 10), (torch.arange(10) % 2)[None].numpy(), 2), "divide_by_loss_batch: labels"),
    (lambda: __import__("tad_plugin.results", fromlist=["x"]).TrustSplit([True] * 3, [0.5] * 3, [0.1, 0.2]),
     "TrustSplit: trusted"),
    (lambda: __import__("tad_plugin.results", fromlist=["x"]).Recalibration([0, 1], [True, False], [0.5, 0.5]),
     "Recalibration: labels"),
    (lambda: __import__("tad_plugin.engine.audit", fromlist=["x"]).kfold_assignment(
        (torch.arange(10) % 2).numpy(), 2, 0), "kfold_assignment: labels"),
    (lambda: __import__("tad_plugin.losses", fromlist=["x"]).confidence_penalty(torch.zeros(2, 3).numpy()),
     "confidence_penalty: logits"),
])
def test_numpy_arrays_and_lists_are_named_with_the_conversion(call, where):
    with pytest.raises(TypeError, match=f"{where} must be a torch.Tensor, got (ndarray|list); convert with "
                                        f"torch.as_tensor"):
        call()


def test_numpy_numbers_work_where_python_ones_do_and_one_is_not_true():
    import numpy as np

    from tad_plugin.engine.matching import MatchingConfig

    assert TrustLoop(None, Schedule.off(), LABELS, np.int64(C)).num_classes == C
    assert MatchingConfig(iterations=np.int64(10)).iterations == 10 and type(MatchingConfig().iterations) is int
    assert TrustAwareDiversion(gmm_random_state=np.int64(3)).gmm_random_state == 3
    assert Schedule(inner_loop=np.bool_(False)).inner_loop is False
    assert real_init_indices(LABELS, torch.arange(N, dtype=torch.int32), 1, C).dtype == torch.int64
    with pytest.raises(ValueError, match="recompute_steps must be one of"):  # 1 == True, but 1 is no switch
        MatchingConfig(inner_grad="explicit", recompute_steps=1)


def test_a_two_dimensional_class_name_array_and_integer_pixels_are_named(tmp_path):
    import numpy as np

    from tad_plugin.data import DatasetError, load_dataset
    from tad_plugin.features.extractor import FeatureExtractor

    np.savez(tmp_path / "x.npz", train_images=np.zeros((4, 8, 8, 3), np.uint8), train_labels=np.array([0, 1, 0, 1]),
             test_images=np.zeros((2, 8, 8, 3), np.uint8), test_labels=np.array([0, 1]),
             class_names=np.array([["a", "b"]]))
    with pytest.raises(DatasetError, match=r"class_names must be a 1-D array of names .* got shape \(1, 2\)"):
        load_dataset(tmp_path / "x.npz")
    with pytest.raises(ValueError, match=r"got torch.int64: convert 0..255 values with .to\(torch.uint8\)"):
        FeatureExtractor(torch.nn.Flatten(), in_channels=1).embed(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
