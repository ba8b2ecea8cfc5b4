"""tad wrap --cifar10: upstream's torchvision CIFAR-10 from an arrays file (stand-in code: tests/upstream_standin)."""

import importlib.util
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, cifar

from tad_plugin.cli import main
from tad_plugin.data import DatasetError
from tad_plugin.upstream.cifar10 import BASE_FOLDER, CLASSES, accept_folder, cifar10_folder
from tad_plugin.upstream.state import default_state_path

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("standin_utils", HERE / "upstream_standin" / "utils.py")
STANDIN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(STANDIN)
TRAIN, TEST = 3, 1  # images per class


def _arrays(seed=0):
    gen = np.random.default_rng(seed)
    y, yt = np.repeat(np.arange(10), TRAIN), np.repeat(np.arange(10), TEST)
    gen.shuffle(y)
    return {"train_images": gen.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8), "train_labels": y,
            "test_images": gen.integers(0, 256, (len(yt), 32, 32, 3), dtype=np.uint8), "test_labels": yt}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A copy of the stand-in checkout, states under tmp_path; torchvision may not download."""
    root = tmp_path / "repo"
    shutil.copytree(HERE / "upstream_standin", root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("STANDIN_TRACE", str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv("TAD_PLUGIN_WRAP", str(tmp_path / "wrap_states"))
    monkeypatch.syspath_prepend(str(HERE / "upstream_harness"))  # the wandb stand-in

    def no_download(*args, **kwargs):
        raise AssertionError("torchvision tried to download CIFAR-10")

    monkeypatch.setattr(cifar, "download_and_extract_archive", no_download)
    return root


def _folders(repo):
    return sorted(default_state_path(repo).parent.glob("cifar10-*"))


def test_the_upstream_script_reads_cifar10_from_the_arrays_file(repo, tmp_path, caplog):
    arrays = _arrays()
    np.savez(tmp_path / "c10.npz", **arrays)
    original = cifar.check_integrity
    buffer = ["buffer.py", "--dataset=CIFAR10", "--data_path=nowhere", "--buffer_path=buffers", "--num_experts=1",
              "--train_epochs=1", "--save_interval=1", "--batch_train=16"]
    wrap = ["wrap", "mtt", "--repo", str(repo), "--no-tad", "--cifar10", str(tmp_path / "c10.npz"), "--"]
    assert main([*wrap, *buffer]) == 0
    # upstream's own loop trained on the file's labels, in its order
    seen = torch.load(repo / "buffers" / "CIFAR10" / "ConvNet" / "labels_seen.pt")
    assert torch.equal(seen, torch.from_numpy(arrays["train_labels"]))
    assert "not checked against the official release" in caplog.text and "30 train / 10 test images" in caplog.text
    [folder] = _folders(repo)  # beside the trust state, outside the checkout
    assert sorted(p.name for p in (folder / BASE_FOLDER).iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    written = {p.name: p.stat().st_mtime_ns for p in (folder / BASE_FOLDER).iterdir()}

    # distill: the real-image pool holds the file's pixels; the folder is reused, not written again
    assert main([*wrap, "distill.py", "--dataset=CIFAR10", "--data_path=nowhere", "--out=logged", "--ipc=1"]) == 0
    pool = torch.load(repo / "logged" / "pool.pt")
    expected = torch.from_numpy(arrays["train_images"]).permute(0, 3, 1, 2).float() / 255
    expected = (expected - torch.tensor(STANDIN.MEAN).view(3, 1, 1)) / torch.tensor(STANDIN.STD).view(3, 1, 1)
    assert torch.allclose(pool["images_all"], expected, atol=1e-5)
    assert _folders(repo) == [folder]
    assert {p.name: p.stat().st_mtime_ns for p in (folder / BASE_FOLDER).iterdir()} == written

    # the acceptance ends with the run: outside it torchvision rejects these files
    assert cifar.check_integrity is original
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        CIFAR10(str(folder), train=True)

    # another file content gets its own folder
    np.savez(tmp_path / "c10.npz", **_arrays(seed=1))
    assert main([*wrap, *buffer]) == 0
    assert len(_folders(repo)) == 2


def test_encoded_images_are_decoded_into_the_folder(tmp_path):
    arrays = _arrays()
    encoded = dict(arrays)
    for split in ("train", "test"):
        blobs = []
        for image in encoded.pop(f"{split}_images"):
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG")  # lossless: the pixels come back exactly
            blobs.append(np.frombuffer(out.getvalue(), dtype=np.uint8))
        encoded[f"{split}_jpeg"] = np.concatenate(blobs)
        encoded[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(tmp_path / "bundle.npz", **encoded)
    folder = cifar10_folder(tmp_path / "bundle.npz", tmp_path / "cache")
    with accept_folder(folder):
        train, test = CIFAR10(str(folder.root), train=True), CIFAR10(str(folder.root), train=False)
    assert np.array_equal(train.data, arrays["train_images"]) and train.targets == arrays["train_labels"].tolist()
    assert np.array_equal(test.data, arrays["test_images"]) and train.classes == list(CLASSES)


def test_a_damaged_folder_is_written_again(tmp_path):
    np.savez(tmp_path / "c10.npz", **_arrays())
    folder = cifar10_folder(tmp_path / "c10.npz", tmp_path / "cache")
    (folder.root / BASE_FOLDER / "data_batch_3").write_bytes(b"damaged")
    again = cifar10_folder(tmp_path / "c10.npz", tmp_path / "cache")
    assert again.root == folder.root and again.md5 == folder.md5
    with accept_folder(again):
        assert len(CIFAR10(str(again.root), train=True)) == 10 * TRAIN
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.root.name]  # no temporary folder left


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(train_images=a["train_images"][:, :28, :28], test_images=a["test_images"][:, :28, :28]),
     r"32x32 RGB, train_images holds \[30, 28, 28, 3\]"),
    (lambda a: a.update(test_images=a["test_images"][..., 0]), r"test images \(1, 32, 32\) differ in shape"),
    (lambda a: a.update(test_images=a["test_images"].astype(np.float32)), "test_images must be uint8"),
    (lambda a: a.update(train_labels=a["train_labels"][:-1]),
     "train_labels has 29 entries but train_images has 30 images; give one label per image"),
    (lambda a: a.update(train_labels=a["train_labels"] + 1), r"train_labels span \[1, 10\]; CIFAR-10's labels"),
    (lambda a: a.pop("test_labels"), r"lacks the arrays \['test_labels'\]"),
])
def test_a_file_that_is_not_cifar10_shaped_is_one_line_error(repo, tmp_path, capsys, change, message):
    arrays = _arrays()
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert main(["wrap", "mtt", "--repo", str(repo), "--cifar10", str(tmp_path / "bad.npz"), "--", "buffer.py",
                 "--dataset=CIFAR10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.npz" in err
    assert re.search(message, err), err
    assert _folders(repo) == []


def test_cifar10_for_another_dataset_or_a_missing_file_is_refused(repo, tmp_path, capsys):
    np.savez(tmp_path / "c10.npz", **_arrays())
    assert main(["wrap", "mtt", "--repo", str(repo), "--cifar10", str(tmp_path / "c10.npz"), "--", "buffer.py",
                 "--dataset=CIFAR100", "--num_experts=1"]) == 2
    assert "--cifar10 supplies CIFAR-10, but the script loads 'CIFAR100'" in capsys.readouterr().err
    assert main(["wrap", "mtt", "--repo", str(repo), "--cifar10", str(tmp_path / "none.npz"), "--", "buffer.py"]) == 2
    assert "none.npz: no such file" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="no such file"):
        cifar10_folder(tmp_path / "none.npz", tmp_path)


def test_the_in_script_mode_takes_cifar10_from_its_config(tmp_path, monkeypatch):
    from argparse import Namespace

    from tad_plugin.upstream.launch import install

    arrays = _arrays()
    np.savez(tmp_path / "c10.npz", **arrays)
    monkeypatch.setattr(cifar, "check_integrity", cifar.check_integrity)  # install() keeps its check until exit
    config = tmp_path / "wrap.yaml"
    config.write_text(f"cifar10: {tmp_path / 'c10.npz'}\nstate: {tmp_path / 'state' / 'state.pt'}\n"
                      "tad:\n  enabled: false\n")
    monkeypatch.setenv("TAD_WRAP_CONFIG", str(config))
    namespace = {"get_dataset": STANDIN.get_dataset, "epoch": STANDIN.epoch}
    install("buffer", namespace)
    args = Namespace(zca=False, data_path="nowhere")
    dst_train = namespace["get_dataset"]("CIFAR10", "nowhere", args=args)[6]
    assert torch.equal(dst_train.labels, torch.from_numpy(arrays["train_labels"]))
    assert Path(args.data_path).parent == tmp_path / "state"  # the script's args name the folder it read
