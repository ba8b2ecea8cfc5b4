"""SimCLR training on a tiny slice of digits: a step learns, runs resume, the CLI trains and embeds."""

import json

import pytest
import torch

from tad_plugin.data import ImageDataset, load_dataset, save_arrays
from tad_plugin.features.augment import AugmentConfig
from tad_plugin.features.cli import kept_state_text, main
from tad_plugin.features.extractor import load_extractor
from tad_plugin.features.lars import LARS
from tad_plugin.features.train import (
    TrainConfig,
    TrainingError,
    _model_and_optimizer,
    _Step,
    lr_at,
    state_path_for,
    train_simclr,
)


@pytest.fixture(scope="module")
def tiny():
    d = load_dataset("digits")
    return ImageDataset("tiny", d.train_images[:32], d.train_labels[:32], d.test_images[:20], d.test_labels[:20],
                        d.class_names)


def _config(**kw):
    base = dict(epochs=2, batch_size=16, hidden_dim=64, out_dim=16, eval_every=1, knn_ks=(1, 10),
                checkpoint_every=1, warmup_epochs=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_one_step_on_digits_updates_the_model_and_lowers_nothing_to_nan(tiny, optimizer):
    torch.manual_seed(0)
    cfg = _config(optimizer=optimizer)
    model, opt = _model_and_optimizer(1, cfg, torch.device("cpu"))
    assert isinstance(opt, LARS if optimizer == "lars" else torch.optim.SGD)
    step = _Step(model, opt, cfg, [0.3], [0.3], torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    loss = step(tiny.train_images[:16])
    assert loss.dim() == 0 and torch.isfinite(loss) and not loss.requires_grad
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert changed == len(before)
    assert 0 <= step.timer.share() <= 1


def test_a_step_draws_two_independent_views_of_every_image(tiny):
    """Both views come from one augmentation call on the doubled batch: rows i and B + i are image i with their
    own draws. With flips as the only augmentation, every view is image i or its mirror, and the two views of an
    image disagree about the flip for about half of the images (reused draws would never disagree)."""
    torch.manual_seed(0)
    cfg = _config(augment=AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.5, jitter_p=0.0,
                                        grayscale_p=0.0))
    model, opt = _model_and_optimizer(1, cfg, torch.device("cpu"))
    batch = tiny.train_images[:16]
    views = _Step(model, opt, cfg, [0.3], [0.3], torch.device("cpu")).views(batch)
    assert views.shape == (32, *batch.shape[1:]) and views.dtype == torch.float32
    image = batch.float() / 255
    same = (views.view(2, 16, -1) - image.view(1, 16, -1)).abs().amax(dim=2) < 1e-4
    mirrored = (views.view(2, 16, -1) - image.flip(-1).view(1, 16, -1)).abs().amax(dim=2) < 1e-4
    assert (same | mirrored).all()  # each view is its own image, unflipped or mirrored
    disagree = (same[0] & ~same[1]) | (~same[0] & same[1])
    assert 3 <= int(disagree.sum()) <= 13  # independent draws: ~8 of 16 pairs differ


def test_interrupted_run_resumes_records_history_and_writes_files(tiny, tmp_path):
    ck = tmp_path / "run.pt"
    calls = []

    def crash_in_epoch_two(line):
        calls.append(line)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_simclr(tiny, _config(), "cpu", checkpoint=ck, progress=False, log=crash_in_epoch_two)
    assert not ck.exists() and state_path_for(ck).is_file()
    assert kept_state_text(ck) == (f"kept {state_path_for(ck)} (after epoch 1 of 2); the same command with --resume "
                                   f"continues from it (the epoch in progress starts over)")  # what Ctrl-C says
    with pytest.raises(TrainingError, match=r"holds an interrupted training \(epoch 1 of 2\): add --resume"):
        train_simclr(tiny, _config(), "cpu", checkpoint=ck, progress=False)  # not overwritten without --resume
    lines = []
    result = train_simclr(tiny, _config(), "cpu", checkpoint=ck, resume=True, progress=False, log=lines.append)
    assert "resumed" in lines[0] and len(lines) == 2
    straight = train_simclr(tiny, _config(), "cpu", progress=False, log=lambda _m: None)
    assert torch.equal(straight.extractor.embed(tiny.test_images), result.extractor.embed(tiny.test_images))
    assert result.epochs == 2 and [h["epoch"] for h in result.history] == [1, 2]
    assert set(result.knn) == {1, 10} and all(0 <= v <= 1 for v in result.knn.values())
    for h in result.history:
        assert {"epoch", "seconds", "loss", "lr", "images_per_s", "augment_share", "knn1", "knn10",
                "knn10_weighted"} <= set(h)
        assert 0 <= h["knn10_weighted"] <= 1
    assert result.history[1]["seconds"] > result.history[0]["seconds"]
    loaded = load_extractor(ck)
    assert loaded.meta["epochs"] == 2 and loaded.in_channels == 1
    torch.testing.assert_close(loaded.embed(tiny.test_images), result.extractor.embed(tiny.test_images),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(TrainingError, match="batch_size"):
        train_simclr(tiny, _config(batch_size=8), "cpu", checkpoint=ck, resume=True, progress=False)
    with pytest.raises(TrainingError, match="optimizer='sgd'"):
        train_simclr(tiny, _config(optimizer="lars"), "cpu", checkpoint=ck, resume=True, progress=False)
    state = torch.load(state_path_for(ck), weights_only=True)  # a state written before the optimizer knob
    del state["config"]["optimizer"], state["config"]["lars_eta"]
    torch.save(state, state_path_for(ck))
    assert train_simclr(tiny, _config(), "cpu", checkpoint=ck, resume=True, progress=False).epochs == 2


def test_a_resume_on_other_images_or_another_size_is_refused(tiny, tmp_path):
    """A state continues only the training it came from: not at another image size, not on other images."""
    ck = tmp_path / "run.pt"
    lines = []
    with pytest.raises(KeyboardInterrupt):  # in epoch 2, after epoch 1's state was written
        train_simclr(tiny, _config(), "cpu", checkpoint=ck, progress=False,
                     log=lambda line: lines.append(line) or len(lines) < 2 or _interrupt())
    with pytest.raises(TrainingError, match=r"cannot resume .*it was trained with image_size=None; pass the same"):
        train_simclr(tiny, _config(image_size=16), "cpu", checkpoint=ck, resume=True, progress=False)
    inverted = ImageDataset("inverted", 255 - tiny.train_images, tiny.train_labels, tiny.test_images, tiny.test_labels,
                            tiny.class_names)
    with pytest.raises(TrainingError, match=r"it was trained on other images \(name tiny then, inverted now, "
                                            r"sample_sha1 \w+ then, \w+ now\)"):
        train_simclr(inverted, _config(), "cpu", checkpoint=ck, resume=True, progress=False)


def _interrupt():
    raise KeyboardInterrupt


def test_resume_without_state_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_simclr(tiny, _config(), "cpu", checkpoint=tmp_path / "x.pt", resume=True, progress=False)


def test_batch_larger_than_dataset_is_refused(tiny):
    with pytest.raises(ValueError, match="batch_size"):
        train_simclr(tiny, _config(batch_size=64), "cpu", progress=False)


def test_lr_schedule_warms_up_and_decays_to_zero():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


def test_config_round_trips_through_a_dict():
    cfg = _config(optimizer="lars", lars_eta=0.02, augment=AugmentConfig(crop_scale=(0.08, 1.0)))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_default_lr_follows_the_optimizer_and_batch():
    assert _config(batch_size=512).base_lr == pytest.approx(0.12)
    assert _config(batch_size=512, optimizer="lars").base_lr == pytest.approx(0.6)
    assert _config(batch_size=512, optimizer="lars", lr=1.0).base_lr == 1.0


def test_unknown_optimizer_is_refused(capsys):
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; choose one of sgd, lars"):
        _config(optimizer="adam")
    with pytest.raises(SystemExit):
        main(["features", "train", "--dataset", "digits", "--optimizer", "adam"])
    assert "invalid choice: 'adam'" in capsys.readouterr().err


@pytest.mark.parametrize("changes, message", [
    ({"hidden_dim": 0}, r"hidden_dim and out_dim must be >= 1, got 0 and 16"),
    ({"out_dim": 0}, r"hidden_dim and out_dim must be >= 1, got 64 and 0"),
    ({"checkpoint_every": -1}, r"checkpoint_every >= 0"),
    ({"eval_every": -1}, r"eval_every >= 0 \(0: at the end\)"),
])
def test_sizes_and_intervals_that_cannot_work_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)


def test_an_output_path_or_device_that_cannot_work_is_refused_before_training(tmp_path, capsys):
    # --out naming a folder once trained the whole run, then failed writing and left a state file behind
    from tad_plugin.cli import main as tad

    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for argv, message in ((["--out", str(tmp_path)], f"--out {tmp_path} is a folder; give the path of the file"),
                          (["--out", str(a_file / "x.pt")], "notes.txt is a file, not a folder"),
                          (["--out", str(tmp_path / "x.pt"), "--json", str(tmp_path)], f"--json {tmp_path} is a "
                                                                                       "folder"),
                          (["--device", "gpu"], "device 'gpu'")):
        assert tad(["features", "train", "--dataset", "digits", "--epochs", "1", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_train_then_embed(tiny, tmp_path, capsys):
    data = tmp_path / "tiny.npz"
    save_arrays(tiny, data)
    ck = tmp_path / "ex.pt"
    assert main(["features", "train", "--dataset", str(data), "--out", str(ck), "--epochs", "1",
                 "--batch-size", "16", "--no-progress", "--device", "cpu", "--optimizer", "lars",
                 "--weight-decay", "1e-6", "--lars-eta", "0.02", "--hidden-dim", "32", "--proj-dim", "8"]) == 0
    record = json.loads(ck.with_suffix(".json").read_text())
    keys = ("optimizer", "weight_decay", "lars_eta", "base_lr", "hidden_dim", "out_dim")
    assert {k: record["config"][k] for k in keys} == {
        "optimizer": "lars", "weight_decay": 1e-6, "lars_eta": 0.02, "base_lr": 0.3 * 16 / 256, "hidden_dim": 32,
        "out_dim": 8}
    assert record["epochs"] == 1 and set(record["knn"]) == {"10", "200"} and len(record["history"]) == 1
    out = tmp_path / "features.pt"
    assert main(["features", "embed", "--dataset", str(data), "--checkpoint", str(ck), "--out", str(out),
                 "--device", "cpu"]) == 0
    feats = torch.load(out, weights_only=True)
    assert feats["train_features"].shape == (32, 512) and feats["test_features"].shape == (20, 512)
    assert torch.equal(feats["test_labels"], tiny.test_labels)
    # a named dataset is read from --data-root, as in tad run (the Tiny ImageNet name reads ROOT/tinyimagenet.npz)
    root = tmp_path / "root"
    root.mkdir()
    save_arrays(tiny, root / "tinyimagenet.npz")
    named = tmp_path / "named.pt"
    assert main(["features", "embed", "--dataset", "tinyimagenet", "--data-root", str(root), "--checkpoint",
                 str(ck), "--out", str(named), "--device", "cpu", "--split", "test"]) == 0
    assert torch.allclose(torch.load(named, weights_only=True)["test_features"], feats["test_features"])


def test_a_slow_first_epoch_does_not_cut_the_warm_up_short(tiny, monkeypatch):
    """With a time budget the epochs are re-planned after each one; the first (compilation) plans too few. The
    warm-up must not follow that plan: the learning rate rises linearly over its epochs whatever the plan."""
    import tad_plugin.features.train as train_module

    calls = {"n": 0}

    def clock():  # the first epoch "takes" 34 s, each later one 4 s
        calls["n"] += 1
        return 4.0 * calls["n"] + (30.0 if calls["n"] >= 2 else 0.0)
    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    ticks = iter(range(10**6))  # the augmentation timer keeps its own clock (3 readings per step on a CPU)
    monkeypatch.setattr(train_module._StepTimer, "_mark", lambda self: float(next(ticks)))
    cfg = _config(epochs=100, warmup_epochs=10, time_budget=68.0, eval_every=0, checkpoint_every=0)
    result = train_simclr(tiny, cfg, device="cpu", progress=False, log=lambda _m: None)
    lrs = [h["lr"] for h in result.history]
    assert len(lrs) == 9  # planned 2 epochs after the first, 9 after the second: the run ends inside the warm-up
    assert lrs == pytest.approx([cfg.base_lr * e / 10 for e in range(1, len(lrs) + 1)])


def test_compare_plots_several_runs_and_names_a_wrong_file(tmp_path):
    """compare_runs (reproduction/train_features.py --compare): the records of two runs on one PNG; a file that is
    not such a record is refused with its name."""
    pytest.importorskip("matplotlib")
    from tad_plugin.features.plots import compare_runs

    records = []
    for name, acc in (("a", 0.7), ("b", 0.8)):
        history = [{"epoch": e, "seconds": 30.0 * e, "knn10": acc * e / 3} for e in (1, 2, 3)]
        path = tmp_path / f"features_{name}.json"
        path.write_text(json.dumps({"dataset": name, "commit": "0123456789", "device": "NVIDIA H100", "epochs": 3,
                                    "knn": {"10": acc}, "history": history}))
        records.append(path)
    out = tmp_path / "runs.png"
    compare_runs(records, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = tmp_path / "bench.json"
    wrong.write_text(json.dumps({"throughput": []}))
    with pytest.raises(ValueError, match="bench.json: not a training record"):
        compare_runs([records[0], wrong], tmp_path / "no.png")
    assert not (tmp_path / "no.png").exists()


def test_training_at_another_image_size_saves_an_extractor_that_resizes_what_it_embeds(tiny, tmp_path):
    from tad_plugin.features.train import resized

    flat = torch.full((3, 1, 8, 8), 200, dtype=torch.uint8)
    assert resized(flat, 16).shape == (3, 1, 16, 16) and bool((resized(flat, 16) == 200).all())
    assert resized(flat, None) is flat and resized(flat, 8) is flat
    ck = tmp_path / "big.pt"
    result = train_simclr(tiny, _config(epochs=1, image_size=16), "cpu", checkpoint=ck, progress=False,
                          log=lambda line: None)
    loaded = load_extractor(ck)
    assert loaded.input_size == (16, 16) and loaded.meta["config"]["image_size"] == 16
    features = loaded.embed(tiny.test_images)  # 8 x 8 images, resized to what it was trained on
    assert features.shape == (20, 512) and bool(torch.isfinite(features).all())
    torch.testing.assert_close(features, result.extractor.embed(tiny.test_images), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="image_size must be >= 8 pixels"):
        _config(image_size=4)
