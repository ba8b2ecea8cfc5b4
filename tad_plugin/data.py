"""Image datasets the way users have them, as one in-memory :class:`ImageDataset`.

Every loader returns the whole split as uint8 tensors in NCHW layout, so that the engine can move a
dataset to the GPU once and augment it there. Supported sources (see :func:`load_dataset`):

* ``"digits"`` -- scikit-learn's 8x8 handwritten digits, shipped with scikit-learn (the embedded
  default: no download, no files);
* ``"cifar10"`` / ``"cifar100"`` -- torchvision's datasets in ``root`` (``download=True`` fetches them
  where there is internet; without it a missing dataset is a clear error, never a silent attempt);
* ``"tinyimagenet"`` -- ``root/tinyimagenet.npz`` (what ``tad data unpack`` writes), else the
  ``root/tiny-imagenet-200/`` directory (never downloaded);
* a directory in ImageFolder layout (``train/<class>/*`` plus ``val/<class>/*`` or ``test/<class>/*``;
  Tiny ImageNet's own ``tiny-imagenet-200/`` tree is recognised too, see :func:`list_image_folder`);
* a plain arrays file ``.npz`` with ``train_images`` (uint8 NHWC), ``train_labels``, ``test_images``,
  ``test_labels`` and optionally ``class_names``;
* an encoded arrays file ``.npz``: the same labels and names, but ``train_jpeg`` / ``test_jpeg`` (uint8, the
  image files -- JPEG, PNG, ... -- back to back) with ``train_offsets`` / ``test_offsets`` (int64 [N + 1];
  image ``i`` is ``jpeg[offsets[i]:offsets[i + 1]]``) instead of the pixels; decoded on load (to RGB).
  :mod:`tad_plugin.packing` writes such files from a directory.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TADError
from .files import atomic_write

__all__ = ["ImageDataset", "load_dataset", "save_arrays", "channel_stats", "DatasetError", "DATASET_NAMES",
           "ImageFolderIndex", "list_image_folder", "decode_images", "ENCODED_KEYS"]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "tinyimagenet")


class DatasetError(TADError, ValueError):
    """A dataset is missing, corrupt or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: short identifier (``"cifar10"``, a directory name, ...), used in file names and logs.
        train_images: uint8 tensor [N, C, H, W], pixel values 0..255.
        train_labels: int64 tensor [N], values in [0, num_classes). These are the labels as loaded
            (clean for the standard datasets); noise is applied separately by :mod:`tad_plugin.noise`.
        test_images: uint8 tensor [M, C, H, W].
        test_labels: int64 tensor [M].
        class_names: one name per class; ``len(class_names) == num_classes``.

    Raises:
        DatasetError: images not uint8 [N, C, H, W], labels not int64 [N] (one per image) in
            [0, len(class_names)), or train and test images of different shapes.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        k = len(self.class_names)
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
                raise DatasetError(f"{self.name}: {split}_images and {split}_labels must be torch tensors, got "
                                   f"{type(images).__name__} and {type(labels).__name__}; convert with "
                                   f"torch.as_tensor")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DatasetError(
                    f"{self.name}: {split}_images must be a uint8 tensor [N, C, H, W], got "
                    f"{images.dtype} {tuple(images.shape)}"
                )
            if images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
                raise DatasetError(f"{self.name}: {split}_images {tuple(images.shape)} look channels-last ([N, H, W, "
                                   f"C]); give [N, C, H, W]: images.permute(0, 3, 1, 2)")
            if labels.dtype != torch.int64 or labels.dim() != 1:
                raise DatasetError(
                    f"{self.name}: {split}_labels must be an int64 tensor [{len(images)}], got "
                    f"{labels.dtype} {tuple(labels.shape)}"
                )
            if len(labels) != len(images):
                raise DatasetError(f"{self.name}: {split}_labels has {len(labels)} entries but {split}_images has "
                                   f"{len(images)} images; give one label per image, in the images' order")
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
                raise DatasetError(
                    f"{self.name}: {split}_labels span [{int(labels.min())}, {int(labels.max())}] but "
                    f"there are {k} class names; labels must lie in [0, {k})"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DatasetError(
                f"{self.name}: train images {tuple(self.train_images.shape[1:])} and test images "
                f"{tuple(self.test_images.shape[1:])} differ in shape"
            )

    @property
    def num_classes(self) -> int:
        """C, the number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """C of the images (1 grayscale, 3 RGB)."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images in pixels."""
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def class_counts(self) -> torch.Tensor:
        """Number of training samples per class, int64 [num_classes]."""
        return torch.bincount(self.train_labels, minlength=self.num_classes)


def check_images_vary(dataset: ImageDataset) -> None:
    """Raise :class:`DatasetError` naming the channel when one channel of ``dataset``'s training images holds a
    single value (blank images, or a wrong conversion): it cannot be normalised, and a run would stop only after
    its folder is written."""
    images = dataset.train_images
    lo, hi = images.amin(dim=(0, 2, 3)), images.amax(dim=(0, 2, 3))
    same = torch.nonzero(lo == hi).flatten().tolist()
    if same:
        c = same[0]
        raise DatasetError(f"{dataset.name}: channel {c} of the training images is constant (every value "
                           f"{int(lo[c])}); the images are blank or wrongly converted: check the file")


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W] / 255: float32 [C] each, CPU.

    Computed in float64 chunks on the images' device. Raises ``ValueError`` if there are no images or a channel
    is constant.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_stats needs images [N >= 1, C, H, W], got {tuple(images.shape)}")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64, device=images.device)
    sq = torch.zeros_like(s)
    for i in range(0, images.shape[0], chunk):
        f = images[i:i + chunk].double().div_(255).transpose(0, 1).reshape(c, -1)
        s += f.sum(1)
        sq += f.pow(2).sum(1)
    n = images.numel() // c
    mean = s / n
    std = (sq / n - mean.pow(2)).clamp_min(0).sqrt()
    if bool((std == 0).any()):
        raise ValueError("a channel of the training images is constant (std 0); cannot normalise it")
    return mean.float().cpu(), std.float().cpu()


def load_dataset(source: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                 download: bool = False) -> ImageDataset:
    """Load a dataset by name or path.

    Args:
        source: ``"digits"``, ``"cifar10"``, ``"cifar100"``, ``"tinyimagenet"``, a directory in ImageFolder
            layout (Tiny ImageNet's ``tiny-imagenet-200/`` included), or a ``.npz`` arrays file (pixels or
            encoded images). Names are matched first, ignoring case, ``-`` and ``_``: give a folder that
            bears such a name as a path (``./digits``).
        root: directory holding torchvision's CIFAR files (``cifar-10-batches-py`` / ``cifar-100-python``) or
            Tiny ImageNet (``tinyimagenet.npz`` or ``tiny-imagenet-200/``); defaults to
            ``$TAD_PLUGIN_DATA``, else ``~/.cache/tad_plugin/data``. Ignored for the other sources.
        download: let torchvision download CIFAR when it is missing (needs internet); ignored for the other
            sources.

    Returns:
        The :class:`ImageDataset`, uint8 images [N, C, H, W] and int64 labels on the CPU.

    Raises:
        DatasetError: the source does not exist, is corrupt, or is malformed.
    """
    text = str(source)
    key = text.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return _load_digits()
    if key in ("cifar10", "cifar100"):
        return _load_torchvision_cifar(key, root, download)
    if key in ("tinyimagenet", "tinyimagenet200"):
        return _load_tiny_imagenet(root)
    path = Path(text).expanduser()
    if path.suffix == ".npz":
        return _load_arrays(path)
    if path.is_dir():
        return _load_image_folder(path)
    raise DatasetError(
        f"unknown dataset {text!r}: use one of {', '.join(DATASET_NAMES)}, an ImageFolder directory, or "
        f"a .npz arrays file (train_images uint8 NHWC, train_labels, test_images, test_labels)"
        + ("" if path.exists() else f"; no file or directory exists at {path}")
    )


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 grey levels 0..16 -> 0..255; one channel.
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    # A fixed, stratified split (about 72% / 28%), the same on every machine.
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test_mask[rng.choice(idx, size=round(0.28 * len(idx)), replace=False)] = True
    return ImageDataset(
        name="digits",
        train_images=torch.from_numpy(images[~test_mask]),
        train_labels=torch.from_numpy(labels[~test_mask]),
        test_images=torch.from_numpy(images[test_mask]),
        test_labels=torch.from_numpy(labels[test_mask]),
        class_names=tuple(str(c) for c in range(10)),
    )


def _default_root() -> Path:
    return Path(os.environ.get("TAD_PLUGIN_DATA", Path.home() / ".cache" / "tad_plugin" / "data"))


def _load_torchvision_cifar(key: str, root: str | os.PathLike[str] | None, download: bool) -> ImageDataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
    folder = Path(root).expanduser() if root is not None else _default_root()
    splits = {}
    for train in (True, False):
        try:
            ds = cls(str(folder), train=train, download=download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
            raise DatasetError(
                f"{key} not found or corrupt under {folder} ({exc}). Pass download=True "
                f"(CLI: --download) where there is internet, point root at a folder holding "
                f"{cls.base_folder}/, or convert your copy to a .npz arrays file"
            ) from exc
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        splits[train] = (images, torch.as_tensor(ds.targets, dtype=torch.int64))
    return ImageDataset(key, *splits[True], *splits[False], class_names=tuple(ds.classes))


def _load_tiny_imagenet(root: str | os.PathLike[str] | None) -> ImageDataset:
    folder = Path(root).expanduser() if root is not None else _default_root()
    arrays, tree = folder / "tinyimagenet.npz", folder / "tiny-imagenet-200"
    if arrays.is_file():
        return _load_arrays(arrays)
    if tree.is_dir():
        return _load_image_folder(tree)
    raise DatasetError(f"tinyimagenet: neither {arrays} nor {tree}/ exists. Extract tiny-imagenet-200.zip into "
                       f"{folder}, or write the arrays file there with `tad data unpack MANIFEST {arrays}`, or point "
                       f"root (CLI: --data-root) at the folder holding either")


def _load_arrays(path: Path) -> ImageDataset:
    if not path.is_file():
        raise DatasetError(f"arrays file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"cannot read arrays file {path}: it is not an .npz archive (a truncated copy, or another "
                           f"format); re-create it with save_arrays()")
    try:
        with np.load(path, allow_pickle=False) as npz:
            encoded = "train_jpeg" in npz.files
            needed = ENCODED_KEYS if encoded else ("train_images", "train_labels", "test_images", "test_labels")
            missing = set(needed) - set(npz.files)
            if missing:
                raise DatasetError(
                    f"{path} lacks the arrays {sorted(missing)}; an arrays file needs train_images "
                    f"(uint8 [N, H, W, C]), train_labels, test_images, test_labels, optional class_names"
                    + (" (an encoded one: train_jpeg, train_offsets and test_jpeg, test_offsets instead of the "
                       "images)" if encoded else "")
                )
            arrays = {k: npz[k] for k in npz.files}
    except DatasetError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise DatasetError(f"cannot read arrays file {path}: {str(exc).rstrip('.')}; re-create it with "
                           f"save_arrays()") from exc

    def images(split: str) -> torch.Tensor:
        if encoded:
            return torch.from_numpy(_decode_split(arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"],
                                                  f"{path} {split}"))
        a = arrays[f"{split}_images"]
        if a.dtype != np.uint8 or a.ndim not in (3, 4):
            scaled = "; store pixels 0..255 as uint8 (floats in [0, 1]: (images * 255).round().astype(np.uint8))" \
                if a.dtype != np.uint8 else ""
            raise DatasetError(
                f"{path}: {split}_images must be uint8 [N, H, W, C] (or [N, H, W] for grey), got "
                f"{a.dtype} {a.shape}{scaled}"
            )
        if a.ndim == 4 and a.shape[1] in _CHANNELS and a.shape[3] not in _CHANNELS:
            raise DatasetError(f"{path}: {split}_images {a.shape} look channels-first [N, C, H, W]; an arrays file "
                               f"holds [N, H, W, C]: save images.transpose(0, 2, 3, 1)")
        if not len(a):
            raise DatasetError(f"{path}: {split}_images is empty; an arrays file needs training images and held-out "
                               f"test images")
        if a.ndim == 3:
            a = a[..., None]
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def labels(split: str) -> torch.Tensor:
        a = arrays[f"{split}_labels"]
        if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1:
            raise DatasetError(f"{path}: {split}_labels must be a 1-D integer array, got {a.dtype} {a.shape}")
        return torch.from_numpy(a.astype(np.int64))

    train_labels, test_labels = labels("train"), labels("test")
    if "class_names" in arrays:
        if arrays["class_names"].ndim != 1:
            raise DatasetError(f"{path}: class_names must be a 1-D array of names (one per class, in label order), "
                               f"got shape {arrays['class_names'].shape}")
        names = tuple(str(n) for n in arrays["class_names"])
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DatasetError(f"{path}: class_names lists {', '.join(map(repr, twice[:5]))} more than once; give one "
                               f"distinct name per class, in label order")
    else:  # classes 0 .. the largest label of either split (a class without training images is refused later)
        top = max([int(t.max()) for t in (train_labels, test_labels) if len(t)], default=-1)
        if top >= len(train_labels):  # more classes than training images: some could never have one
            split = "train" if len(train_labels) and int(train_labels.max()) == top else "test"
            raise DatasetError(f"{path}: {split}_labels hold the label {top}, so {top + 1} classes for "
                               f"{len(train_labels)} training images; a stray label? fix it, or give class_names "
                               f"(one name per class)")
        names = tuple(str(c) for c in range(top + 1))
    return ImageDataset(path.stem, images("train"), train_labels, images("test"), test_labels, names)


def save_arrays(dataset: ImageDataset, path: str | os.PathLike[str],
                extra: dict[str, np.ndarray] | None = None) -> None:
    """Write ``dataset`` as a ``.npz`` arrays file that :func:`load_dataset` reads back (atomically), with the
    ``extra`` arrays beside it under their own keys (e.g. label sets that ``--cifar-n PATH --label-set KEY``
    reads); None = none.

    Raises:
        ValueError: a path without the ``.npz`` suffix (:func:`load_dataset` would not know it), an empty
            training or test set (it would not load back), or an extra array under a key of the dataset's own.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: an arrays file needs the .npz suffix, which load_dataset recognises it by")
    if not len(dataset.train_labels) or not len(dataset.test_labels):
        raise ValueError(f"{dataset.name}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} test "
                         f"images; an arrays file needs both sets non-empty to load back")
    arrays: dict[str, Any] = {  # Any: numpy's stub checks savez's **arrays against allow_pickle
        "train_images": dataset.train_images.permute(0, 2, 3, 1).numpy(),
        "train_labels": dataset.train_labels.numpy(),
        "test_images": dataset.test_images.permute(0, 2, 3, 1).numpy(),
        "test_labels": dataset.test_labels.numpy(),
        "class_names": np.array(dataset.class_names),
    }
    clash = sorted(set(extra or {}) & set(arrays))
    if clash:
        raise ValueError(f"extra arrays may not replace the dataset's own: {', '.join(clash)}")
    arrays.update(extra or {})
    atomic_write(path, lambda f: np.savez(f, **arrays))


@dataclass(frozen=True)
class ImageFolderIndex:
    """The files of an ImageFolder directory and their labels, in load order (see :func:`list_image_folder`).

    Attributes:
        classes: class names (sub-directory names / wnids); label ``i`` is ``classes[i]``.
        train: ``(file, label)`` of every training image.
        test: ``(file, label)`` of every held-out image (``val/`` or ``test/``).
    """

    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    test: tuple[tuple[Path, int], ...]


def list_image_folder(path: str | os.PathLike[str]) -> ImageFolderIndex:
    """List an ImageFolder directory's images and labels without decoding them.

    Layouts:

    * ``train/<class>/**/<image>`` plus ``val/<class>/**/<image>`` (else ``test/<class>/**/<image>``);
    * Tiny ImageNet's ``tiny-imagenet-200/``: ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with
      ``val/val_annotations.txt`` (tab-separated: file name, wnid, box) giving the held-out labels,
      ``wnids.txt``, ``words.txt``. Its ``test/`` has no labels and is not read.

    Class order: the ``train/`` sub-directories sorted by name (torchvision's ``ImageFolder`` rule, so labels
    agree with it). Tiny ImageNet's ``wnids.txt`` lists the same 200 wnids in another (unsorted) order; it is
    checked to name exactly the ``train/`` classes but does not set the order. Within a class, files are
    sorted by path; held-out images of the annotation file keep its line order.

    Raises:
        DatasetError: no ``train/`` folder or no class in it, ``wnids.txt`` and ``train/`` disagree, a
            malformed annotation line, an annotated image that is missing or of an unknown class, or no
            training / held-out images at all.
    """
    path = Path(path)
    train_dir = path / "train"
    if not train_dir.is_dir():
        raise DatasetError(
            f"{path} is not in ImageFolder layout: expected {train_dir}/<class>/<image> plus val/ or test/"
        )
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{train_dir} has no class sub-directories")
    index = {c: i for i, c in enumerate(classes)}
    wnids_file = path / "wnids.txt"
    if wnids_file.is_file():
        wnids = set(wnids_file.read_text().split())
        if wnids != set(classes):
            missing, extra = sorted(wnids - set(classes)), sorted(set(classes) - wnids)
            raise DatasetError(
                f"{wnids_file} lists {len(wnids)} classes but {train_dir} holds {len(classes)} class folders"
                + (f"; missing folders: {', '.join(missing[:5])}" if missing else "")
                + (f"; folders not in wnids.txt: {', '.join(extra[:5])}" if extra else "")
                + ": the tree is incomplete, extract the dataset again"
            )

    def files_in(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)

    train = [(p, index[c]) for c in classes for p in files_in(train_dir / c)]
    annotations = path / "val" / "val_annotations.txt"
    if annotations.is_file():
        test = _tiny_imagenet_val(annotations, index)
    else:
        test = []
        for split in ("val", "test"):
            if (path / split).is_dir():
                extra = sorted(d.name for d in (path / split).iterdir() if d.is_dir() and d.name not in index)
                if extra:
                    raise DatasetError(f"{path / split} has class folder(s) {', '.join(extra[:5])} that {train_dir} "
                                       f"lacks: their images could not be scored; add the class to train/ or remove "
                                       f"the folder")
                test = [(p, index[c]) for c in classes for p in files_in(path / split / c)]
                break
    if not train:
        raise DatasetError(f"{train_dir}: its class folders hold no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    if not test:
        raise DatasetError(f"{path}: no held-out images: neither val/<class>/ nor test/<class>/ (nor Tiny ImageNet's "
                           f"val/val_annotations.txt) holds any; add a held-out split, the test accuracy is measured "
                           f"on it")
    return ImageFolderIndex(tuple(classes), tuple(train), tuple(test))


def _tiny_imagenet_val(annotations: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    images = annotations.parent / "images"
    items = []
    for n, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        where = f"{annotations} line {n}"
        if len(parts) < 2:
            raise DatasetError(f"{where} is not '<file>\\t<wnid>\\t...': {line[:80]!r}; restore the original "
                               f"annotation file")
        if parts[1] not in index:
            raise DatasetError(f"{where} labels {parts[0]} with {parts[1]!r}, which is not a class folder of "
                               f"{annotations.parent.parent / 'train'}: the tree is incomplete, extract it again")
        file = images / parts[0]
        if not file.is_file():
            raise DatasetError(f"{file} (listed in {where}) is missing: the tree is incomplete, extract it again")
        items.append((file, index[parts[1]]))
    return items


def decode_images(blobs: Iterable[bytes], count: int, where: str, names: Sequence[str] | None = None,
                  progress: str | None = None) -> np.ndarray:
    """Decode ``count`` encoded image files (JPEG, PNG, ... as Pillow reads them) into one RGB array.

    Grey, palette and CMYK images are converted to RGB (a grey value becomes three equal channels).

    Args:
        blobs: the files' bytes, in order (any iterable of ``count`` items).
        count: number of images.
        where: what the images are, for error messages (a path, ``"file.npz train"``).
        names: each image's name for error messages (its file); None = its position in ``where``.
        progress: a tqdm bar with this description (None = no bar).

    Returns:
        uint8 [count, 3, H, W] (NCHW, as :class:`ImageDataset` holds them).

    Raises:
        DatasetError: an image that does not decode, or images of different sizes.
    """
    import io

    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    out: np.ndarray | None = None
    i = -1
    for i, blob in enumerate(tqdm(blobs, total=count, desc=progress, unit="img", disable=progress is None)):
        if i >= count:
            raise DatasetError(f"{where}: expected {count} images, got more")
        name = names[i] if names is not None else f"{i} of {where}"
        try:
            with Image.open(io.BytesIO(blob)) as im:
                a = np.asarray(im.convert("RGB"))
        except Exception as exc:
            why = "not an image PIL can read (corrupt, or another format)" \
                if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise DatasetError(f"cannot decode image {name}: {why}; remove or replace the file") from exc
        if out is None:
            out = np.empty((count, 3, *a.shape[:2]), dtype=np.uint8)
        elif a.shape[:2] != out.shape[2:]:
            raise DatasetError(f"{where}: image {name} is {a.shape[1]}x{a.shape[0]} but the first image is "
                               f"{out.shape[3]}x{out.shape[2]}; resize the images to one size")
        out[i] = a.transpose(2, 0, 1)
    if out is None or i != count - 1:
        raise DatasetError(f"{where}: expected {count} images, got {i + 1}")
    return out


def _decode_split(jpeg: np.ndarray, offsets: np.ndarray, where: str) -> np.ndarray:
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1 or offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise DatasetError(f"{where}: the encoded images must be uint8 [bytes] with integer offsets [N + 1], got "
                           f"{jpeg.dtype} {jpeg.shape} and {offsets.dtype} {offsets.shape}")
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(jpeg) or bool((np.diff(offsets) <= 0).any()):
        raise DatasetError(f"{where}: offsets must rise from 0 to the {len(jpeg)} bytes of images; the file is "
                           f"corrupt, pack it again")
    data = jpeg.tobytes()
    return decode_images((data[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())),
                         len(offsets) - 1, where)


#: The arrays of an encoded arrays file (``class_names`` optional), as :func:`load_dataset` reads them.
ENCODED_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels")


def _read_files(items: Sequence[tuple[Path, int]], where: Path) -> tuple[torch.Tensor, torch.Tensor]:
    def blobs() -> Iterator[bytes]:
        for p, _ in items:
            try:
                yield p.read_bytes()
            except OSError as exc:
                raise DatasetError(f"cannot read image {p}: {exc}") from exc

    images = decode_images(blobs(), len(items), str(where), names=[str(p) for p, _ in items])
    return torch.from_numpy(images), torch.tensor([y for _, y in items], dtype=torch.int64)


def _load_image_folder(path: Path) -> ImageDataset:
    index = list_image_folder(path)
    return ImageDataset(path.name, *_read_files(index.train, path), *_read_files(index.test, path),
                        class_names=index.classes)


#: Channel counts of an image array's channel axis (grey, RGB, RGBA): how a channels-first array is told apart.
_CHANNELS = (1, 3, 4)

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
