"""FeatureExtractor: any module, uint8 and [0, 1] float input, clear errors; extractor files round-trip."""

import pytest
import torch
from torch import nn

from tad_plugin.features.extractor import (
    ExtractorFileError,
    FeatureExtractor,
    default_extractor_path,
    load_extractor,
    save_extractor,
)
from tad_plugin.features.resnet import FEATURE_DIM, cifar_resnet18


def _toy_module(in_ch=3, size=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_ch * size * size, 5))


def _uint8(n=7, c=3, size=8):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_any_module_uint8_and_float_give_the_same_features():
    ex = FeatureExtractor(_toy_module(), normalize=([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), batch_size=3)
    x = _uint8()
    a, b = ex.embed(x), ex.embed(x.float() / 255)
    assert a.shape == (7, 5) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-5)
    # batching does not change the result or the order
    whole = FeatureExtractor(ex.module, normalize=([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), batch_size=100).embed(x)
    assert torch.allclose(a, whole, atol=1e-5)


def test_progress_bar_counts_every_image_and_leaves_the_features_alone(capsys):
    ex = FeatureExtractor(_toy_module(), batch_size=3)
    x = _uint8()
    silent = ex.embed(x)
    assert "embed train" not in capsys.readouterr().err
    shown = ex.embed(x, progress="embed train")
    err = capsys.readouterr().err
    assert "embed train" in err and "7/7" in err
    assert torch.equal(silent, shown)


def test_normalisation_is_applied():
    module = nn.Flatten()
    x = torch.full((1, 1, 2, 2), 0.75)
    out = FeatureExtractor(module, normalize=([0.5], [0.25])).embed(x)
    assert torch.allclose(out, torch.ones(1, 4))


@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 3, 8, 8) * 3, "inverse ZCA"),
    (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(3, 8, 8), r"\[N, C, H, W\]"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "uint8"),
])
def test_bad_images_are_refused_with_a_clear_message(bad, match):
    with pytest.raises(ValueError, match=match):
        FeatureExtractor(_toy_module()).embed(bad)


def test_grey_images_are_repeated_and_resized_for_an_rgb_module():
    ex = FeatureExtractor(_toy_module(in_ch=3, size=8), in_channels=3, input_size=8)
    grey = _uint8(c=1, size=16)
    out = ex.embed(grey)
    assert out.shape == (7, 5)
    rgb = grey.expand(-1, 3, -1, -1)
    assert torch.allclose(out, ex.embed(rgb), atol=1e-5)


def test_module_mode_is_restored():
    module = _toy_module()
    module.train()
    FeatureExtractor(module).embed(_uint8())
    assert module.training


def test_extractor_file_round_trip(tmp_path):
    torch.manual_seed(0)
    backbone = cifar_resnet18(3)
    with torch.no_grad():  # non-default BN statistics must survive the round trip too
        for m in backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / "ex.pt"
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    save_extractor(backbone, path, in_channels=3, image_size=(16, 16), mean=mean, std=std,
                   meta={"dataset": "toy", "knn": {"10": 0.5}})
    loaded = load_extractor(path)
    assert loaded.meta == {"dataset": "toy", "knn": {"10": 0.5}}
    x = _uint8(n=4, size=16)
    expected = FeatureExtractor(backbone, normalize=(mean, std), in_channels=3).embed(x)
    got = loaded.embed(x)
    assert got.shape == (4, FEATURE_DIM)
    assert torch.allclose(got, expected, atol=1e-5)


def test_missing_and_corrupt_files_say_how_to_fix(tmp_path):
    with pytest.raises(ExtractorFileError, match="tad features train"):
        load_extractor(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ExtractorFileError, match="cannot read"):
        load_extractor(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ExtractorFileError, match="not a tad_plugin feature extractor"):
        load_extractor(other)


def test_load_waits_for_an_extractor_still_being_written(tmp_path):
    import threading

    from tad_plugin.features import cifar_resnet18

    path = tmp_path / "late.pt"
    with pytest.raises(ExtractorFileError, match="after waiting 0.2 s .*tad.features_wait_s"):
        load_extractor(path, wait_s=0.2)
    backbone = cifar_resnet18(3)
    writer = threading.Timer(0.3, lambda: save_extractor(backbone, path, in_channels=3, image_size=(8, 8),
                                                         mean=[0.5] * 3, std=[0.25] * 3, meta={"dataset": "toy"}))
    writer.start()
    try:
        assert load_extractor(path, wait_s=30).meta == {"dataset": "toy"}  # appeared while waiting
    finally:
        writer.join()


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path))
    assert default_extractor_path("cifar10") == tmp_path / "cifar10.pt"
    assert default_extractor_path("/data/my_set.npz") == tmp_path / "my_set.pt"
