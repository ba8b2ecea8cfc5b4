"""The FTD, DATM and ATT adapters: defaults tables, DATM's window and initialisation, ATT's step choice,
and each adapter distilling a 2-class toy set end to end with TAD on and off."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from tad_plugin import TADHooks, TrustSplit, get_plugin_manager, hookimpl
from tad_plugin.adapters.att import ATT, ATT_TABLE, att_defaults
from tad_plugin.adapters.datm import (
    DATM,
    DATM_TABLE,
    DATMMatcher,
    datm_defaults,
    predicted_correctly_indices,
    soft_label_init,
    window_upper_bound,
)
from tad_plugin.adapters.ftd import FTD, FTD_TABLE, ftd_defaults
from tad_plugin.adapters.mtt import MTT, mtt_defaults
from tad_plugin.cli import build_parser, config_from_args, main
from tad_plugin.data import ImageDataset
from tad_plugin.engine.config import ConfigError, build_config
from tad_plugin.engine.convnet import ConvNetConfig, init_params
from tad_plugin.engine.experts import per_sample_losses
from tad_plugin.engine.matching import MatchingConfig, closest_step, step_distance
from tad_plugin.engine.pipeline import load_distilled
from tad_plugin.engine.preprocess import Preprocessor

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = {"ftd": (FTD, ftd_defaults), "datm": (DATM, datm_defaults), "att": (ATT, att_defaults)}


def toy(n=40, m=10):
    """Two classes of 8x8 grey images (dark vs bright) with 20% of the training labels flipped."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (y[:, None, None, None] * 120 + torch.randint(0, 100, (n, 1, 8, 8), generator=g)).to(torch.uint8)
    ty = torch.arange(m) % 2
    tx = (ty[:, None, None, None] * 120 + torch.randint(0, 100, (m, 1, 8, 8), generator=g)).to(torch.uint8)
    noisy = y.clone()
    noisy[::5] = 1 - noisy[::5]
    return ImageDataset("toy", x, y, tx, ty, class_names=("dark", "bright")), noisy


def toy_config(method, tad, **extra):
    sets = [f"tad.enabled={str(tad).lower()}", "device=cpu", "model.width=4", "model.depth=2",
            "buffer.num_experts=2", "buffer.epochs=4", "buffer.batch_size=10", "buffer.experts_per_group=2",
            "tad.warmup_epochs=1", "tad.inner_loop=false", "distill.ipc=2", "distill.iterations=3",
            "distill.syn_steps=3", "distill.max_start_epoch=2", "distill.expert_epochs=2", "distill.batch_syn=null",
            "eval.num_eval=2", "eval.epochs=2", "eval.batch_size=8", *[f"{k}={v}" for k, v in extra.items()]]
    if method == "datm":
        sets += ["distill.window_start=1", "distill.window_growth_iterations=2"]
    return build_config(ADAPTERS[method][1]("toy", 2), sets=sets)


class TrustCleanLabels:
    """A division that trusts exactly the samples whose label is clean (known in this test)."""

    def __init__(self, clean):
        self.clean = clean

    @hookimpl
    def filter_dataset(self, losses, labels, num_classes):
        t = labels == self.clean
        return TrustSplit(trusted=t, confidence=t.float(), thresholds=torch.zeros(num_classes))


# ---------------------------------------------------------------------------- defaults


def test_defaults_follow_the_upstream_tables():
    f = ftd_defaults("cifar10", 10)
    assert f["buffer"]["optimizer"] == "gsam" and f["buffer"]["rho"] == 0.01 and f["buffer"]["alpha"] == 0.3
    assert f["distill"]["ema_decay"] == 0.9995 and f["distill"]["lr_teacher"] == 0.001 and f["data"]["zca"]
    assert ftd_defaults("cifar10", 50)["buffer"]["alpha"] == 1.0
    d = datm_defaults("cifar10", 10)
    assert d["buffer"]["epochs"] == 100 and d["buffer"]["optimizer"] == "gsam" and d["buffer"]["alpha"] == 0.3
    assert (d["distill"]["window_start"], d["distill"]["max_start_epoch"], d["distill"]["window_growth_iterations"]) \
        == (10, 20, 1000)
    assert d["distill"]["lr_labels"] == 2.0 and d["distill"]["loss_gate"] == 1.0 and d["eval"]["batch_size"] == 128
    assert datm_defaults("cifar100", 50)["distill"]["pix_init"] == "real"
    a = att_defaults("cifar10", 10)
    assert a["distill"]["adaptive_length"] and a["distill"]["adaptive_distance"] == "l1"
    assert a["distill"]["lr_img"] == 1e4 and a["buffer"]["optimizer"] == "sgd" and a["buffer"]["batch_size"] == 512
    for table, defaults in ((FTD_TABLE, ftd_defaults), (DATM_TABLE, datm_defaults), (ATT_TABLE, att_defaults)):
        assert {(ds, i) for ds in ("cifar10", "cifar100") for i in (1, 10, 50)} <= set(table)
        # Tiny ImageNet: FTD's and ATT's papers give IPC 1 and 10 only
        assert {i for ds, i in table if ds == "tinyimagenet"} == ({1, 10, 50} if table is DATM_TABLE else {1, 10})
        assert len(table) == 6 + len({i for ds, i in table if ds == "tinyimagenet"})
        for ds, ipc in table:
            build_config(defaults(ds, ipc))  # every row is a valid config


def test_settings_a_method_does_not_implement_are_refused():
    with pytest.raises(ConfigError, match="distill.window_start"):
        MTT(build_config(sets=["device=cpu", "distill.window_start=5"]), progress=False)
    with pytest.raises(ConfigError, match="distill.lr_labels"):
        FTD(build_config(ftd_defaults("cifar10", 10), sets=["device=cpu", "distill.lr_labels=2"]), progress=False)
    with pytest.raises(ConfigError, match="samples_predicted_correctly"):
        ATT(build_config(att_defaults("cifar10", 10),
                         sets=["device=cpu", "distill.pix_init=samples_predicted_correctly"]), progress=False)


def test_cli_method_picks_the_method_defaults():
    cfg = config_from_args(build_parser().parse_args(["run", "--method", "datm", "--dataset", "cifar10"]))
    assert cfg.method == "datm" and cfg.buffer.epochs == 100 and cfg.distill.lr_labels == 2.0
    for name in ("ftd", "datm", "att"):
        path = ROOT / "examples" / "configs" / f"{name}_cifar10_sym40_ipc10.yaml"
        cfg = config_from_args(build_parser().parse_args(["run", "--config", str(path)]))
        assert cfg.method == name and cfg.data.noise == "symmetric" and cfg.tad.enabled
    cfg = config_from_args(build_parser().parse_args(
        ["run", "--config", str(ROOT / "examples" / "configs" / "att_cifar10n_worst_ipc10.yaml")]))
    assert cfg.method == "att" and cfg.data.label_set == "worse_label" and cfg.distill.adaptive_length


# ---------------------------------------------------------------------------- DATM


def test_datm_window_grows_as_specified():
    # C10 IPC10: T' = 10, T+ = 20 over 1000 iterations: hi = min(20, 10 + int(10 * it / 1000))
    expected = {0: 10, 99: 10, 100: 11, 550: 15, 999: 19, 1000: 20, 5000: 20}
    assert {it: window_upper_bound(it, 10, 20, 1000) for it in expected} == expected
    assert window_upper_bound(7, None, 20, 1000) == 20  # sequential generation off: the whole window
    cfg = MatchingConfig(iterations=5, syn_steps=1, max_start_epoch=20, min_start_epoch=2)
    net = ConvNetConfig(in_channels=1, num_classes=2, image_size=(8, 8), width=4, depth=2)
    matcher = DATMMatcher(net, cfg, [torch.zeros(23, net.num_params)], torch.zeros(4, 1, 8, 8),
                          torch.tensor([0, 0, 1, 1]), window_start=10, window_growth_iterations=1000, progress=False)
    assert [matcher.start_window(it) for it in (0, 500, 2000)] == [(2, 10), (2, 15), (2, 20)]
    with pytest.raises(ValueError, match="window_start"):
        DATMMatcher(net, cfg, [torch.zeros(23, net.num_params)], torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]),
                    window_start=2, window_growth_iterations=10, progress=False)


def test_soft_label_init_averages_correct_experts_and_never_divides_by_zero():
    logits = torch.tensor([[[2.0, 0.0], [3.0, 0.0], [1.0, 0.0]],    # expert 0 says class 0 for every image
                           [[0.0, 1.0], [4.0, 0.0], [0.0, 2.0]],    # expert 1
                           [[5.0, 1.0], [2.0, 1.0], [0.0, 4.0]]])   # expert 2
    classes = torch.tensor([0, 1, 1])
    out = soft_label_init(logits, classes)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], (logits[0, 0] + logits[2, 0]) / 2)  # experts 0 and 2 are right
    torch.testing.assert_close(out[1], logits[:, 1].mean(0))               # nobody is right: all experts
    torch.testing.assert_close(out[2], (logits[1, 2] + logits[2, 2]) / 2)


def test_predicted_correctly_indices_prefer_the_first_expert_and_stay_in_the_pool(caplog):
    net = ConvNetConfig(in_channels=1, num_classes=2, image_size=(8, 8), width=4, depth=2)
    ds, noisy = toy()
    pre = Preprocessor.for_dataset(ds)
    pool = torch.arange(0, 40, 2)  # a "trusted space": the even indices
    experts = list(init_params(net, 3, torch.Generator().manual_seed(1)))
    with caplog.at_level(logging.WARNING):
        idx = predicted_correctly_indices(net, experts, ds.train_images, noisy, pool, 3, pre,
                                          generator=torch.Generator().manual_seed(0))
    assert idx.shape == (6,) and set(idx.tolist()) <= set(pool.tolist()) and len(set(idx.tolist())) == 6
    assert torch.equal(noisy[idx], torch.tensor([0, 0, 0, 1, 1, 1]))
    _, correct0 = per_sample_losses(net, experts[0][None], ds.train_images, noisy, pre, 64)
    for c in range(2):
        members = pool[noisy[pool] == c]
        chosen = idx[3 * c:3 * c + 3]
        assert int(correct0[0, chosen].sum()) == min(3, int(correct0[0, members].sum()))


# ---------------------------------------------------------------------------- ATT


def test_att_closest_step_matches_a_brute_force_running_minimum():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        d = torch.randint(0, 4, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).float()  # many ties
        if trial % 5 == 0 and d.numel() > 1:
            d[0] = float("nan")
        best, index = float("inf"), None
        for k, v in enumerate(d.tolist()):
            if best >= v:  # upstream's update, from +inf instead of 10000
                best, index = v, k
        assert int(closest_step(d)) == index
    w, t = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0])
    assert float(step_distance(w, t, "l1")) == 3.0 and float(step_distance(w, t, "squared_l2")) == 5.0


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("tad", [False, True], ids=["noisy", "tad"])
@pytest.mark.parametrize("method", sorted(ADAPTERS))
def test_adapter_distils_a_toy_set_end_to_end(method, tad, tmp_path):
    ds, noisy = toy()
    cls = ADAPTERS[method][0]
    hooks = None
    if tad:
        pm = get_plugin_manager()
        pm.register(TrustCleanLabels(ds.train_labels))  # TAD's expert_loss stays; the division is known
        hooks = TADHooks(pm)
    pipe = cls(toy_config(method, tad), hooks=hooks, progress=False)
    store = pipe.buffer(ds, noisy, tmp_path / "buffer")
    assert store.finished() == [0, 1] and store.meta["method"] == method
    assert store.meta["buffer"]["optimizer"] == ("sgd" if method == "att" else "gsam")
    gen = torch.Generator().manual_seed(0)
    pre = pipe.preprocessor(ds, store)
    if tad:  # the real initialisation comes from the trusted space: only correctly labelled images
        images = pipe.initial_images(store, store.finished(), ds, noisy, pre, gen)
        trusted = pre(ds.train_images[noisy == ds.train_labels])
        trusted_y = ds.train_labels[noisy == ds.train_labels]
        match = (images[:, None] - trusted[None]).flatten(2).abs().amax(-1) == 0  # [M, n_trusted]
        assert match.any(1).all()
        assert torch.equal(trusted_y[match.float().argmax(1)], torch.tensor([0, 0, 1, 1]))
    result = pipe.distill(store, ds, noisy, evaluator=pipe.evaluator(ds, pre), checkpoint=tmp_path / "ck.pt")
    assert result.images.shape == (4, 1, 8, 8) and torch.isfinite(result.images).all()
    evals = [h for h in result.history if "eval" in h]
    assert len(evals) == 1 and result.best is not None
    if method == "datm":
        assert result.labels.shape == (4, 2) and result.labels.dtype == torch.float32
        assert torch.isfinite(result.labels).all()
        start = result.history[0]["initial_soft_labels"]  # how peaked the soft labels started (run record)
        assert 0.5 <= start["mean_max_prob"] <= 1 and 0 <= start["mean_entropy"] <= math.log(2) + 1e-6
    else:
        assert torch.equal(result.labels, torch.tensor([0, 0, 1, 1]))
        assert result.ema_images is not None and "eval_ema" in evals[0]
    assert 0 <= pipe.evaluate(result, ds, pre).mean <= 1


def test_run_reuses_another_runs_buffer_only_when_it_fits(tmp_path, capsys):
    common = ["--config", str(ROOT / "tad_plugin" / "configs" / "demo.yaml"), "--no-tad", "--no-progress",
              "--num-experts", "1", "--epochs", "4", "--iterations", "1", "--ipc", "1", "--set", "distill.syn_steps=1",
              "--set", "distill.max_start_epoch=2", "--set", "eval.num_eval=1", "--set", "eval.epochs=1"]
    assert main(["buffer", *common, "--out", str(tmp_path / "mtt")]) == 0
    argv = ["run", "--method", "att", *common, "--out", str(tmp_path / "att"),
            "--buffer", str(tmp_path / "mtt" / "buffer")]
    assert main(argv) == 0
    assert "ATT: test accuracy" in capsys.readouterr().out
    assert not (tmp_path / "att" / "buffer").exists()  # no experts trained: MTT's were used
    record = json.loads((tmp_path / "att" / "result_run.json").read_text())
    assert record["stages"]["buffer"]["reused"] == str(tmp_path / "mtt" / "buffer")
    assert 0 <= record["results"]["test_acc_ema_mean"] <= 1  # ATT's EMA images are evaluated too
    assert load_distilled(tmp_path / "att" / "distilled.pt")[0].ema_images.shape == (10, 1, 8, 8)
    assert main([*argv[:-2], "--buffer", str(tmp_path / "mtt" / "buffer"), "--noise-rate", "0.2"]) == 2
    assert "other labels" in capsys.readouterr().err
    # a buffer with fewer finished experts than the run asks for (e.g. its own run stopped mid-buffer)
    assert main([*argv, "--num-experts", "2"]) == 2
    assert "holds 1 finished experts but this run asks for 2" in capsys.readouterr().err
    # experts of other preprocessing: their trajectories live in another input space
    assert main([*argv, "--zca"]) == 2
    assert "unwhitened images but this run has data.zca=true" in capsys.readouterr().err


def test_reusing_experts_of_another_recipe_is_warned_about(tmp_path, caplog):
    common = ["--config", str(ROOT / "tad_plugin" / "configs" / "demo.yaml"), "--no-tad", "--no-progress",
              "--num-experts", "1", "--epochs", "4", "--iterations", "1", "--ipc", "1", "--set", "distill.syn_steps=1",
              "--set", "distill.max_start_epoch=2", "--set", "eval.num_eval=1", "--set", "eval.epochs=1"]
    assert main(["buffer", *common, "--out", str(tmp_path / "mtt")]) == 0
    buffer = ["--buffer", str(tmp_path / "mtt" / "buffer")]
    with caplog.at_level("WARNING", logger="tad_plugin.runs"):
        assert main(["run", "--method", "att", *common, "--out", str(tmp_path / "att"), *buffer]) == 0
    assert "another recipe" not in caplog.text  # ATT trains MTT's plain-SGD experts
    with caplog.at_level("WARNING", logger="tad_plugin.runs"):
        assert main(["run", "--method", "ftd", *common, "--out", str(tmp_path / "ftd"), *buffer]) == 0
    assert "trained with another recipe than FTD's: optimizer 'sgd' (this method: 'gsam')" in caplog.text


def test_a_dataset_file_gets_its_family_row_and_zca():
    from tad_plugin.engine.pipeline import dataset_key

    assert dataset_key("/root/cifar10.npz") == dataset_key("CIFAR-10") == "cifar10"
    assert dataset_key("data/cifar_100.npz") == "cifar100" and dataset_key("/data/tiny-imagenet/") == "tinyimagenet"
    assert mtt_defaults("/root/cifar10.npz", 10) == mtt_defaults("cifar10", 10)
    assert mtt_defaults("/root/cifar10.npz", 10)["data"]["zca"]
    assert not mtt_defaults("/data/my_photos", 10)["data"]["zca"]


def test_soft_label_summary_tells_one_hot_from_uniform():
    from tad_plugin.engine.matching import soft_label_summary

    peaked = soft_label_summary(torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 20.0]]))
    flat = soft_label_summary(torch.zeros(2, 3))
    assert peaked["mean_max_prob"] == pytest.approx(1.0, abs=1e-4) and peaked["mean_entropy"] < 1e-3
    assert flat["mean_max_prob"] == pytest.approx(1 / 3, abs=1e-4)
    assert flat["mean_entropy"] == pytest.approx(math.log(3), abs=1e-4)


def test_datm_label_temperature_divides_the_initial_soft_labels(tmp_path):
    ds, noisy = toy()
    pipe = DATM(toy_config("datm", False), progress=False)
    store = pipe.buffer(ds, noisy, tmp_path / "buffer")
    pre = pipe.preprocessor(ds, store)
    images = pipe.initial_images(store, store.finished(), ds, noisy, pre, torch.Generator().manual_seed(0))
    plain = pipe.initial_labels(store, store.finished(), ds, images)
    warm = DATM(toy_config("datm", False, **{"distill.label_temperature": 4.0}), progress=False)
    assert torch.allclose(warm.initial_labels(store, store.finished(), ds, images), plain / 4)
    assert plain.abs().max() > 0
    with pytest.raises(ConfigError, match="label_temperature"):
        toy_config("datm", False, **{"distill.label_temperature": 0})
    with pytest.raises(ConfigError, match="label_temperature only applies to learned soft labels"):
        toy_config("datm", False, **{"distill.label_temperature": 2.0, "distill.lr_labels": "null"})
    with pytest.raises(ConfigError, match="distill.lr_labels = 1.0 is not used by method 'ftd'"):  # DATM's only
        FTD(toy_config("ftd", False, **{"distill.label_temperature": 2.0, "distill.lr_labels": 1.0}), progress=False)


def test_the_four_methods_register_through_the_entry_point_group():
    from tad_plugin.runs import method_adapter, methods

    assert {"mtt", "ftd", "datm", "att"} <= set(methods())
    assert method_adapter("ftd") == (FTD, ftd_defaults) and method_adapter("mtt") == (MTT, mtt_defaults)
    with pytest.raises(ConfigError, match="method must be one of att, datm, ftd, mtt"):
        method_adapter("nosuch")


@pytest.fixture
def third_party_method(tmp_path, install_distribution):
    """A third-party distribution on sys.path registering a distiller in ``tad_plugin.methods``: MTT with
    another learning rate of the images, and a broken registration."""
    (tmp_path / "fake_distiller.py").write_text(
        "from tad_plugin.adapters.mtt import MTT, mtt_defaults\n\n"
        "def fake_defaults(dataset, ipc):\n"
        "    out = mtt_defaults(dataset, ipc)\n"
        "    out['distill']['lr_img'] = 123.0\n"
        "    return out\n\n"
        "class Fake(MTT):\n"
        "    name = 'fake'\n"
        "    defaults = staticmethod(fake_defaults)\n\n"
        "class NotAPipeline:\n"
        "    pass\n")
    install_distribution("fake-distiller", "[tad_plugin.methods]\nfake = fake_distiller:Fake\n"
                                           "broken = fake_distiller:NotAPipeline\n")


def test_a_third_party_distiller_plugs_in_through_the_entry_point_group(third_party_method, tmp_path):
    from tad_plugin.runs import method_adapter, methods

    assert {"fake", "broken"} <= set(methods())
    args = build_parser().parse_args(["run", "--method", "fake", "--dataset", "digits", "--out", str(tmp_path / "r")])
    cfg = config_from_args(args)
    assert cfg.method == "fake" and cfg.distill.lr_img == 123.0  # its defaults underlie the run
    pipeline, _ = method_adapter("fake")
    assert pipeline.__name__ == "Fake" and issubclass(pipeline, MTT)
    with pytest.raises(ConfigError, match="'broken' = fake_distiller:NotAPipeline is not a Pipeline subclass"):
        method_adapter("broken")
