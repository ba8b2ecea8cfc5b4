"""tad wrap: an upstream-shaped stand-in script (tests/upstream_standin, MTT's layout) run unmodified with TAD."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tad_plugin import Recalibration, TrustSplit, hookimpl
from tad_plugin.cli import main
from tad_plugin.engine.config import TADConfig
from tad_plugin.engine.trajectories import load_upstream_buffer
from tad_plugin.features import ExtractorFileError, FeatureExtractor, cifar_resnet18, save_extractor
from tad_plugin.manager import TADHooks, get_plugin_manager
from tad_plugin.noise import noise_rate
from tad_plugin.tad import TrustAwareDiversion
from tad_plugin.trust_report import TrustReport
from tad_plugin.upstream import TrustState, WrapConfig, run_wrapped
from tad_plugin.upstream import epoch as wrapped_epoch
from tad_plugin.upstream.epoch import HookCriterion

HERE = Path(__file__).parent
NUM_CLASSES, PER_CLASS, EPOCHS, EXPERTS = 4, 30, 5, 2


class Spy:
    """Defers every hook to TAD (returns None) and records the calls."""

    def __init__(self):
        self.calls = {"filter_dataset": 0, "expert_loss": 0, "recalibrate": 0}

    @hookimpl
    def filter_dataset(self, losses):
        self.calls["filter_dataset"] += 1

    @hookimpl
    def expert_loss(self, logits):
        self.calls["expert_loss"] += 1

    @hookimpl
    def recalibrate(self, anchor_features):
        self.calls["recalibrate"] += 1


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A copy of the stand-in checkout with tiny separable data in data/tiny.npz, and a trace file."""
    root = tmp_path / "repo"
    shutil.copytree(HERE / "upstream_standin", root)
    gen = np.random.default_rng(0)
    centres = gen.normal(0, 1, (NUM_CLASSES, 8, 8, 3))

    def draw(n):  # uint8 NHWC, as torchvision's CIFAR .data
        y = np.repeat(np.arange(NUM_CLASSES), n)
        x = 128 + 50 * (centres[y] + 0.3 * gen.normal(0, 1, (len(y), 8, 8, 3)))
        return np.clip(x, 0, 255).round().astype(np.uint8), y.astype(np.int64)

    x, y = draw(PER_CLASS)
    xt, yt = draw(5)
    (root / "data").mkdir()
    np.savez(root / "data" / "tiny.npz", x=x, y=y, xt=xt, yt=yt)
    monkeypatch.setenv("STANDIN_TRACE", str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "no_extractors"))
    monkeypatch.setenv("TAD_PLUGIN_WRAP", str(tmp_path / "wrap_states"))
    monkeypatch.syspath_prepend(str(HERE / "upstream_harness"))
    return root


def _trace(repo):
    lines = (repo.parent / "trace.jsonl").read_text().splitlines()
    (repo.parent / "trace.jsonl").unlink()
    return [json.loads(line) for line in lines]


BUFFER_ARGS = ["--dataset=TINY", "--data_path=data", "--buffer_path=buffers", f"--num_experts={EXPERTS}",
               f"--train_epochs={EPOCHS}", f"--save_interval={EXPERTS}", "--batch_train=32", "--lr_teacher=0.2"]


def test_buffer_and_distill_run_unmodified_with_tad(repo, caplog, capsys):
    """Without an extractor: the documented fallback (the expert's activations, chunk-mean anchors), logged."""
    torch.manual_seed(0)
    spy = Spy()
    pm = get_plugin_manager(TrustAwareDiversion(top_k=10, num_neighbors=5, recall_confidence=0.6),
                            load_entrypoints=False)
    pm.register(spy, name="spy")
    cfg = WrapConfig(tad=TADConfig(warmup_epochs=1, anchor_epoch=3, anchor_ipc=2))
    cfg.data.noise, cfg.data.noise_rate = "symmetric", 0.4
    result = run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, cfg, hooks=TADHooks(pm))
    trace = _trace(repo)
    # the state and the trust report live outside the checkout; a line per division
    assert result.state_path.parent.parent == repo.parent / "wrap_states" and not (repo / "tad_wrap").exists()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tad wrap: expert")]
    assert len(printed) == len(result.divisions) == EXPERTS * (EPOCHS - 1)
    assert printed[0].startswith(f"tad wrap: expert 0 epoch 1: division, {result.divisions[0]['trusted']} of ")
    report = TrustReport.load_json(result.state_path.parent / "trust_report.json")
    assert [(r.epoch, r.stage, r.trusted) for r in report.rounds] == [
        (d["epoch"], "recalibration" if d["recalibrated"] else "division", d["trusted"])
        for d in result.divisions if d["expert"] == 0]
    assert report.noisy_label_accuracy == pytest.approx(0.6, abs=0.01)
    assert "no feature extractor at" in caplog.text and "chunk-mean anchors" in caplog.text

    # hooks: divisions before epochs 1..4 of each expert, recalibration with them from epoch 3 on
    assert spy.calls["filter_dataset"] == EXPERTS * (EPOCHS - 1)
    assert spy.calls["recalibrate"] == EXPERTS * (EPOCHS - 3)
    assert spy.calls["expert_loss"] > 0
    train = [t for t in trace if t["mode"] == "train"]
    assert len(train) == EXPERTS * EPOCHS
    assert {t["criterion"] for t in train} == {HookCriterion.__name__}  # TAD's criterion in training ...
    assert {t["criterion"] for t in trace if t["mode"] == "test"} == {"CrossEntropyLoss"}  # ... upstream's in test
    n = NUM_CLASSES * PER_CLASS
    # the whole set in the warm-up epoch, after it exactly the trusted space of each division
    assert [t["samples"] for t in train[::EPOCHS]] == [n] * EXPERTS
    assert [d["trusted"] for d in result.divisions] == [t["samples"] for i, t in enumerate(train) if i % EPOCHS]
    assert [d["recalibrated"] for d in result.divisions] == [False, False, True, True] * EXPERTS
    assert min(d["trusted"] for d in result.divisions) < n

    # the script saw the noisy labels; its replay buffer keeps upstream's layout
    out = repo / "buffers" / "TINY" / "ConvNet"
    state = TrustState.load(result.state_path)
    assert state.experts == EXPERTS
    # from 60% correct labels TAD's pool is cleaner: 0.73 on one machine, above 0.8 on another (2 experts on 120
    # samples: the float rounding of the machine moves the divisions), so the margin asserted is the labels'
    assert result.summary["trusted_precision"] > 0.65
    assert noise_rate(torch.load(out / "labels_seen.pt"), state.clean_labels) == pytest.approx(0.4, abs=0.01)
    buffer = torch.load(out / "replay_buffer_0.pt")
    assert isinstance(buffer, list) and len(buffer) == EXPERTS
    shapes = ([(8, 3, 3, 3), (8,), (8,), (8,)] + [(8, 8, 3, 3), (8,), (8,), (8,)] * 2
              + [(NUM_CLASSES, 8), (NUM_CLASSES,)])
    for trajectory in buffer:
        assert isinstance(trajectory, list) and len(trajectory) == EPOCHS + 1
        assert all(isinstance(s, list) and [tuple(p.shape) for p in s] == shapes for s in trajectory)
    assert not (repo / "buffers" / "TINY" / "ConvNet" / "replay_buffer_1.pt").exists()

    # distill: the real-image pool is the trusted pool with the recalibrated labels
    assert main(["wrap", "mtt", "--repo", str(repo), "--noise", "symmetric", "--noise-rate", "0.4", "--",
                 "distill.py", "--dataset=TINY", "--data_path=data", "--out=logged"]) == 0
    pool = torch.load(repo / "logged" / "pool.pt")
    indices, labels = state.pool()
    assert torch.equal(pool["labels_all"], labels[indices])
    assert len(pool["images_all"]) == len(indices)
    assert bool((labels[indices] != state.noisy_labels[indices]).any())  # recalibrated, not the noisy ones
    assert pool["image_syn"].shape == (NUM_CLASSES, 3, 8, 8)
    assert "wandb" not in sys.modules or "upstream_harness" in str(sys.modules["wandb"].__file__)


def test_no_tad_injects_only_the_noise(repo):
    assert main(["wrap", "mtt", "--repo", str(repo), "--no-tad", "--noise", "symmetric", "--noise-rate", "0.4",
                 "--", "buffer.py", *BUFFER_ARGS, "--num_experts=1", "--train_epochs=2", "--save_interval=1"]) == 0
    trace = _trace(repo)
    assert {t["criterion"] for t in trace} == {"CrossEntropyLoss"}
    assert all(t["samples"] == NUM_CLASSES * PER_CLASS for t in trace if t["mode"] == "train")
    assert not (repo / "tad_wrap" / "state.pt").exists()
    seen = torch.load(repo / "buffers" / "TINY" / "ConvNet" / "labels_seen.pt")
    assert 0.35 < (seen != torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)).float().mean() < 0.45


def test_errors_name_the_problem(repo, capsys):
    with pytest.raises(ValueError, match="known: buffer.py, distill.py"):
        run_wrapped("mtt", repo, "train.py", [])
    with pytest.raises(FileNotFoundError, match="run the buffer script through `tad wrap`"):
        run_wrapped("mtt", repo, "distill.py", ["--data_path=data"])
    assert main(["wrap", "mtt", "--repo", str(repo), "--", "buffer.py", "--no_such_flag"]) == 2  # argparse's exit
    assert main(["wrap", "mtt", "--repo", str(repo), "--set", "tad.bogus=1", "--", "buffer.py"]) == 2
    assert "tad.bogus" in capsys.readouterr().err
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    state = TrustState.empty(labels, labels, NUM_CLASSES)
    trusted = torch.ones(NUM_CLASSES * PER_CLASS, dtype=torch.bool)
    trusted[:PER_CLASS - 3] = False  # class 0 keeps 3 trusted samples
    state.add_expert(trusted, state.noisy_labels)
    state.save(repo.parent / "small_pool.pt")
    with pytest.raises(ValueError, match=r"fewer than --ipc=5 samples in class 0: 3; .* Lower --ipc"):
        run_wrapped("mtt", repo, "distill.py", ["--data_path=data", "--ipc=5"],
                    WrapConfig(state=str(repo.parent / "small_pool.pt")))
    with pytest.raises(ExtractorFileError, match="no feature extractor at .*missing.pt"):
        run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, WrapConfig(tad=TADConfig(features="missing.pt")))


class AnchorSpy:
    """Records what ``recalibrate`` is given (defers to TAD)."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def recalibrate(self, features, anchor_features, anchor_labels):
        self.calls.append((features.clone(), anchor_features.clone(), anchor_labels.clone()))


@pytest.fixture
def engine_spy(tmp_path, monkeypatch):
    """A small SSL-style extractor file; records the engine's anchor distillation and every embedding."""
    torch.manual_seed(0)
    path = tmp_path / "extractor.pt"
    save_extractor(cifar_resnet18(3), path, in_channels=3, image_size=(8, 8), mean=[0.5] * 3, std=[0.25] * 3)
    calls = {"distill": [], "embed": [], "path": path}
    distill, embed = wrapped_epoch.distill_anchors, FeatureExtractor.embed

    def spy_distill(*args, **kwargs):
        out = distill(*args, **kwargs)
        calls["distill"].append((args, out))
        return out

    def spy_embed(self, images):
        calls["embed"].append(images.detach().cpu().clone())
        return embed(self, images)

    monkeypatch.setattr(wrapped_epoch, "distill_anchors", spy_distill)
    monkeypatch.setattr(FeatureExtractor, "embed", spy_embed)
    return calls


def _run_with(repo, features, *extra, model="ConvNet", anchor_ipc=2):
    spy = AnchorSpy()
    pm = get_plugin_manager(TrustAwareDiversion(top_k=10, num_neighbors=5, recall_confidence=0.6),
                            load_entrypoints=False)
    pm.register(spy, name="spy")
    cfg = WrapConfig(tad=TADConfig(warmup_epochs=1, anchor_epoch=3, anchor_ipc=anchor_ipc, anchor_iterations=3,
                                   features=str(features)))
    cfg.data.noise, cfg.data.noise_rate = "symmetric", 0.4
    run_wrapped("mtt", repo, "buffer.py", [*BUFFER_ARGS, f"--model={model}", *extra], cfg, hooks=TADHooks(pm))
    _trace(repo)
    return spy.calls


@pytest.mark.parametrize("zca", [False, True])
def test_anchors_are_distilled_from_the_early_trajectory_and_embedded(repo, engine_spy, zca):
    recalibrations = _run_with(repo, engine_spy["path"], *(["--zca"] if zca else []))
    n, ipc, anchor_epoch = NUM_CLASSES * PER_CLASS, 2, 3
    # the extractor embedded the raw training images: torchvision's uint8 .data, or (ZCA) the images mapped back
    raw = torch.from_numpy(np.load(repo / "data" / "tiny.npz")["x"]).permute(0, 3, 1, 2)
    first = engine_spy["embed"][0]
    assert first.dtype == torch.uint8 and torch.equal(first, raw)
    # once per expert, the engine's distillation from snapshots 0..anchor_epoch of the expert, which are the
    # replay buffer's own (the flat layout is upstream's parameters() order)
    assert len(engine_spy["distill"]) == EXPERTS
    buffers = load_upstream_buffer(repo / "buffers" / "TINY" / "ConvNet" / "replay_buffer_0.pt")
    for (args, (_anchor_features, anchor_labels)), trajectory in zip(engine_spy["distill"], buffers):
        early = args[2]
        assert len(early) == 1 and torch.allclose(early[0], trajectory[:anchor_epoch + 1])
        assert torch.equal(anchor_labels.cpu(), torch.arange(NUM_CLASSES).repeat_interleave(ipc))
    # the distilled anchors were mapped back to [0, 1] pixels and embedded, then handed to recalibrate
    anchors_in_pixels = engine_spy["embed"][1:]
    assert len(anchors_in_pixels) == EXPERTS
    for images in anchors_in_pixels:
        assert images.shape == (NUM_CLASSES * ipc, 3, 8, 8) and images.is_floating_point()
        assert 0 <= float(images.min()) and float(images.max()) <= 1 and float(images.std()) > 0.01
    assert len(recalibrations) == EXPERTS * (EPOCHS - anchor_epoch)
    features, anchors, labels = recalibrations[0]
    assert features.shape[0] == n and features.shape[1] == anchors.shape[1] == 512  # the extractor's, not the net's
    assert torch.equal(anchors, engine_spy["distill"][0][1][0].cpu())
    assert torch.equal(recalibrations[1][1], anchors)  # distilled once per expert, reused at every recalibration
    assert not torch.equal(recalibrations[-1][1], anchors)  # the second expert has its own


def test_a_class_short_of_trusted_samples_draws_its_anchors_from_its_labelled_ones(repo, engine_spy, caplog):
    _run_with(repo, engine_spy["path"], anchor_ipc=PER_CLASS - 6)  # 40% noise: fewer trusted per class
    assert f"fewer than tad.anchor_ipc={PER_CLASS - 6} trusted samples" in caplog.text
    assert len(engine_spy["distill"]) == EXPERTS  # the upstream run went on, with distilled anchors


def test_a_network_other_than_the_engines_convnet_falls_back_to_chunk_anchors(repo, engine_spy, caplog):
    recalibrations = _run_with(repo, engine_spy["path"], model="ConvNetBN")
    assert "ConvNet's parameters or buffers differ from the engine's ConvNet-D3" in caplog.text
    assert "anchors fall back to chunk means" in caplog.text
    assert engine_spy["distill"] == [] and len(engine_spy["embed"]) == 1  # the train set only
    assert len(recalibrations) == EXPERTS * (EPOCHS - 3)
    features, anchors, _ = recalibrations[0]
    assert features.shape[1] == anchors.shape[1] == 512  # chunk means of the extractor's features


@pytest.mark.parametrize("choice", ["expert", "file"])
def test_expert_or_fixed_features_keep_the_chunk_anchors(repo, engine_spy, caplog, choice):
    fixed = torch.randn(NUM_CLASSES * PER_CLASS, 5)
    if choice == "file":
        torch.save(fixed, repo / "fixed.pt")
    recalibrations = _run_with(repo, "expert" if choice == "expert" else repo / "fixed.pt")
    assert engine_spy["distill"] == [] and engine_spy["embed"] == []
    assert "feature extractor" not in caplog.text
    features, anchors, _ = recalibrations[0]
    if choice == "file":
        assert torch.equal(features, fixed) and anchors.shape[1] == 5
    else:
        assert features.shape[1] == anchors.shape[1] == 8  # the stand-in ConvNet's penultimate width


class FirstHalfThenRecallAll:
    """Divisions that always trust the first half of the samples, and a ``recalibrate`` that recalls every
    untrusted sample with its label unchanged (both override TAD's)."""

    @hookimpl
    def filter_dataset(self, losses, num_classes):
        trusted = torch.arange(len(losses)) < len(losses) // 2
        return TrustSplit(trusted=trusted, confidence=trusted.float(), thresholds=torch.full((num_classes,), 0.5))

    @hookimpl
    def recalibrate(self, labels, trusted):
        return Recalibration(labels=labels.clone(), trusted=torch.ones_like(trusted),
                             reliability=torch.full(labels.shape, float("nan")))


@pytest.mark.parametrize("recall_once", [False, True])
def test_recall_once_keeps_expelled_recalls_out_under_wrap(repo, recall_once):
    """The second half is recalled by the first recalibration and expelled by every division: without
    ``recall_once`` each recalibration recalls it again; with it, only the first does."""
    torch.manual_seed(0)
    pm = get_plugin_manager(TrustAwareDiversion(), load_entrypoints=False)
    pm.register(FirstHalfThenRecallAll(), name="first_half")
    cfg = WrapConfig(tad=TADConfig(warmup_epochs=1, anchor_epoch=3, anchor_ipc=2, recall_once=recall_once))
    cfg.data.noise, cfg.data.noise_rate = "symmetric", 0.4
    result = run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, cfg, hooks=TADHooks(pm))
    _trace(repo)
    n = NUM_CLASSES * PER_CLASS
    recalibrated = [d["trusted"] for d in result.divisions if d["recalibrated"]]
    assert recalibrated == ([n, n // 2] if recall_once else [n, n]) * EXPERTS


def test_the_warmup_confidence_penalty_reaches_upstreams_warmup_epochs_only(repo):
    torch.manual_seed(0)
    cfg = WrapConfig(tad=TADConfig(warmup_epochs=2, anchor_epoch=3, anchor_ipc=2, inner_loop=False,
                                   warmup_confidence_penalty=1.0))
    cfg.data.noise, cfg.data.noise_rate = "symmetric", 0.4
    run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, cfg)
    train = [t["criterion"] for t in _trace(repo) if t["mode"] == "train"]
    assert train == (["WarmupCriterion"] * 2 + ["HookCriterion"] * (EPOCHS - 2)) * EXPERTS
    criterion = wrapped_epoch.WarmupCriterion(TADHooks(get_plugin_manager(load_entrypoints=False)), 0.5)
    logits, targets = torch.randn(6, NUM_CLASSES), torch.arange(6) % NUM_CLASSES
    penalty = (logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    expected = HookCriterion(criterion.hooks)(logits, targets) + 0.5 * penalty
    assert criterion(logits, targets).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("engine_only, match", [(dict(split="shared"), "tad.split = 'shared'"),
                                                (dict(loss_average=3), "tad.loss_average = 3")])
def test_engine_only_settings_are_refused_not_ignored(repo, engine_only, match):
    cfg = WrapConfig(tad=TADConfig(**engine_only))
    with pytest.raises(ValueError, match=match + " is not available under tad wrap"):
        run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, cfg)


class ClassZeroAndEverySixth:
    """Divisions that trust every sample labelled 0 and every sixth of the others: a 6:1:1:1 trusted space."""

    @hookimpl
    def filter_dataset(self, losses, labels, num_classes):
        trusted = (labels == 0) | (torch.arange(len(labels)) % 6 == 0)
        return TrustSplit(trusted=trusted, confidence=trusted.float(), thresholds=torch.full((num_classes,), 0.5))


class TrustNothing:
    @hookimpl
    def filter_dataset(self, losses, num_classes):
        return TrustSplit(trusted=torch.zeros(len(losses), dtype=torch.bool), confidence=torch.zeros(len(losses)),
                          thresholds=torch.full((num_classes,), 0.5))


def test_an_empty_trusted_space_is_the_error_reported(repo):
    """Not masked by the trust state's own complaint (no sample trusted by half of the experts) while the
    wrapper saves the state on the way out."""
    pm = get_plugin_manager(TrustAwareDiversion(), load_entrypoints=False)
    pm.register(TrustNothing(), name="nothing")
    cfg = WrapConfig(tad=TADConfig(warmup_epochs=1, inner_loop=False))
    with pytest.raises(RuntimeError, match="expert 0: the trusted space is empty before epoch 1; check the plugin"):
        run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, cfg, hooks=TADHooks(pm))


@pytest.mark.parametrize("balance", [False, True])
def test_balance_classes_draws_upstreams_epochs_class_balanced(repo, balance):
    """After the first division upstream's epoch sees the trusted space once each (class 0 about two thirds of
    it), or with ``tad.balance_classes`` as many draws, each class about a quarter."""
    torch.manual_seed(0)
    pm = get_plugin_manager(TrustAwareDiversion(), load_entrypoints=False)
    pm.register(ClassZeroAndEverySixth(), name="class_zero")
    cfg = WrapConfig(tad=TADConfig(warmup_epochs=1, inner_loop=False, balance_classes=balance))
    run_wrapped("mtt", repo, "buffer.py", BUFFER_ARGS, cfg, hooks=TADHooks(pm))
    train = [t for t in _trace(repo) if t["mode"] == "train"]
    assert len(train) == EPOCHS * EXPERTS
    labels = torch.from_numpy(np.load(repo / "data" / "tiny.npz")["y"])
    trusted = int(((labels == 0) | (torch.arange(len(labels)) % 6 == 0)).sum())
    after = [t for i, t in enumerate(train) if i % EPOCHS >= 1]  # every epoch after the first division
    assert all(t["samples"] == trusted for t in after)
    counts = torch.bincount(torch.tensor(sum((t["labels"] for t in after), [])), minlength=NUM_CLASSES)
    share = counts.float() / counts.sum()
    if balance:  # 8 epochs x 45 draws: each share 0.25 +- 0.023 (1 sd)
        assert ((share - 0.25).abs() < 0.09).all(), share
    else:
        assert share[0].item() == pytest.approx(30 / trusted) and (counts[1:] == counts[1]).all()


def test_a_damaged_trust_state_is_named_with_the_fix(tmp_path):
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 cut short")
    torch.save({"clean_labels": torch.zeros(3, dtype=torch.int64)}, tmp_path / "partial.pt")
    for name in ("cut.pt", "partial.pt"):
        with pytest.raises(ValueError, match=f"{name}.*rerun the buffer script through `tad wrap` to write it again"):
            TrustState.load(tmp_path / name)
