import numpy as np
import pytest
import torch
from PIL import Image

from tad_plugin.data import DatasetError, ImageDataset, load_dataset, save_arrays


def test_digits_is_the_embedded_default():
    ds = load_dataset("digits")
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape[1:] == (1, 8, 8)
    assert ds.num_classes == 10 and len(ds.train_labels) + len(ds.test_labels) == 1797
    assert (ds.class_counts() >= 120).all()
    assert int(ds.train_images.max()) == 255
    again = load_dataset("digits")
    assert torch.equal(ds.test_labels, again.test_labels)  # fixed split


def test_arrays_file_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset("toy", torch.randint(0, 256, (20, 3, 4, 5), dtype=torch.uint8, generator=g),
                      torch.arange(20) % 3, torch.randint(0, 256, (6, 3, 4, 5), dtype=torch.uint8, generator=g),
                      torch.arange(6) % 3, ("a", "b", "c"))
    save_arrays(ds, tmp_path / "toy.npz")
    back = load_dataset(tmp_path / "toy.npz")
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(back, field), getattr(ds, field))
    assert back.class_names == ("a", "b", "c") and back.image_size == (4, 5)
    assert not list(tmp_path.glob("*.tmp"))


def test_arrays_file_errors(tmp_path):
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="lacks the arrays"):
        load_dataset(tmp_path / "partial.npz")
    np.savez(tmp_path / "float.npz", train_images=np.zeros((2, 4, 4, 3)), train_labels=np.zeros(2, int),
             test_images=np.zeros((1, 4, 4, 3)), test_labels=np.zeros(1, int))
    with pytest.raises(DatasetError, match="uint8"):
        load_dataset(tmp_path / "float.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read arrays file .*corrupt.npz: it is not an .npz archive"):
        load_dataset(tmp_path / "corrupt.npz")
    whole = (tmp_path / "float.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DatasetError, match="cannot read arrays file .*truncated.npz"):
        load_dataset(tmp_path / "truncated.npz")
    np.savez(tmp_path / "range.npz", train_images=np.zeros((2, 4, 4, 3), np.uint8), train_labels=np.array([0, 5]),
             test_images=np.zeros((1, 4, 4, 3), np.uint8), test_labels=np.zeros(1, int),
             class_names=np.array(["x", "y"]))
    with pytest.raises(DatasetError, match="must lie in"):
        load_dataset(tmp_path / "range.npz")


def _write_images(folder, n, color):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (6, 6), color=(color, i * 10, 0)).save(folder / f"{i}.png")


def test_image_folder_layout(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        _write_images(tmp_path / "data" / split / "cat", n, 10)
        _write_images(tmp_path / "data" / split / "dog", n, 200)
    ds = load_dataset(tmp_path / "data")
    assert ds.class_names == ("cat", "dog") and ds.train_images.shape == (6, 3, 6, 6)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and len(ds.test_labels) == 4
    assert int(ds.train_images[3, 0, 0, 0]) == 200


def test_tiny_imagenet_val_layout(tmp_path):
    root = tmp_path / "tiny"
    _write_images(root / "train" / "n01" / "images", 2, 1)
    _write_images(root / "train" / "n02" / "images", 2, 2)
    _write_images(root / "val" / "images", 3, 3)
    (root / "val" / "val_annotations.txt").write_text("0.png\tn02\t0\t0\t6\t6\n1.png\tn01\t0\t0\t6\t6\n"
                                                      "2.png\tn02\t0\t0\t6\t6\n")
    ds = load_dataset(root)
    assert ds.test_labels.tolist() == [1, 0, 1] and ds.train_images.shape == (4, 3, 6, 6)


def test_corrupt_image_and_missing_sources(tmp_path):
    _write_images(tmp_path / "d" / "train" / "a", 1, 0)
    _write_images(tmp_path / "d" / "test" / "a", 1, 0)
    (tmp_path / "d" / "train" / "a" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"cannot decode image .*broken.png: not an image PIL can read \(corrupt"):
        load_dataset(tmp_path / "d")
    _write_images(tmp_path / "e" / "train" / "a", 1, 0)
    with pytest.raises(DatasetError, match="no held-out images: neither val/<class>/ nor test/<class>/"):
        load_dataset(tmp_path / "e")
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="its class folders hold no images"):
        load_dataset(tmp_path / "f")
    with pytest.raises(DatasetError, match="no file or directory"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="not found or corrupt .*download"):
        load_dataset("cifar10", root=tmp_path / "empty", download=False)


def _arrays(path, **override):
    """An arrays file of 12 random 4x4 RGB train images (3 classes) and 6 test images, with ``override``
    replacing (or, as None, dropping) arrays."""
    g = np.random.default_rng(0)
    arrays = {"train_images": g.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8), "train_labels": np.arange(12) % 3,
              "test_images": g.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), "test_labels": np.arange(6) % 3}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("override, message", [
    ({"train_images": np.zeros((12, 3, 8, 8), np.uint8)},
     r"train_images \(12, 3, 8, 8\) look channels-first \[N, C, H, W\]; .* save images.transpose\(0, 2, 3, 1\)"),
    ({"train_images": np.zeros((12, 4, 4, 3), np.float32)}, r"got float32 .*store pixels 0..255 as uint8"),
    ({"train_labels": np.arange(10) % 3}, r"train_labels has 10 entries but train_images has 12 images; give one "
                                          r"label per image"),
    ({"test_images": np.zeros((0, 4, 4, 3), np.uint8), "test_labels": np.zeros(0, int)},
     r"test_images is empty; an arrays file needs training images and held-out test images"),
])
def test_arrays_file_faults_name_the_array_and_the_fix(tmp_path, override, message):
    path = _arrays(tmp_path / "x.npz", **override)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path)


def test_arrays_without_class_names_take_the_classes_of_both_splits(tmp_path):
    ds = load_dataset(_arrays(tmp_path / "x.npz", train_labels=np.arange(12) % 2, test_labels=np.arange(6) % 3))
    assert ds.num_classes == 3 and ds.class_counts().tolist() == [6, 6, 0]  # a run refuses the empty class 2
    grey = load_dataset(_arrays(tmp_path / "g.npz", train_images=np.zeros((12, 4, 4), np.uint8),
                                test_images=np.zeros((6, 4, 4), np.uint8)))
    assert grey.train_images.shape == (12, 1, 4, 4)  # [N, H, W] stays grey, not channels-first


def test_a_held_out_class_missing_from_train_is_named(tmp_path):
    _write_images(tmp_path / "d" / "train" / "a", 1, 0)
    _write_images(tmp_path / "d" / "val" / "a", 1, 0)
    _write_images(tmp_path / "d" / "val" / "zebra", 1, 0)
    with pytest.raises(DatasetError, match=r"val has class folder\(s\) zebra that .*train lacks"):
        load_dataset(tmp_path / "d")


def test_class_names_listed_twice_are_refused(tmp_path):
    _arrays(tmp_path / "twice.npz", class_names=np.array(["cat", "dog", "cat"]))
    with pytest.raises(DatasetError, match="class_names lists 'cat' more than once"):
        load_dataset(tmp_path / "twice.npz")
