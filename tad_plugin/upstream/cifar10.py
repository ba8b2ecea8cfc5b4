"""CIFAR-10 for upstream scripts from an arrays file (``tad wrap --cifar10 FILE.npz``).

Upstream's ``get_dataset`` reads CIFAR-10 with ``torchvision.datasets.CIFAR10(data_path, download=True)``, which
accepts only the official release's files (an md5 check per file) and otherwise tries to download them.
:func:`cifar10_folder` writes torchvision's ``cifar-10-batches-py`` folder from an arrays file that
:func:`tad_plugin.data.load_dataset` reads (pixels or encoded images), and :func:`accept_folder` makes
torchvision's check accept exactly the files written there (against their own md5s), in this process only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DatasetError, ImageDataset, load_dataset
from ..files import atomic_write, atomic_write_json

__all__ = ["Cifar10Folder", "cifar10_folder", "write_batches", "accept_folder", "accept", "CLASSES", "BASE_FOLDER",
           "OFFICIAL_SIZES"]

#: CIFAR-10's class names in label order (``batches.meta``'s ``label_names``).
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: The folder torchvision's ``CIFAR10(root)`` reads under ``root``.
BASE_FOLDER = "cifar-10-batches-py"
#: The official split sizes (other sizes are accepted and named in the warning).
OFFICIAL_SIZES = (50000, 10000)
_MANIFEST = "tad_cifar10.json"


@dataclass(frozen=True)
class Cifar10Folder:
    """A written CIFAR-10 folder.

    Attributes:
        root: the ``data_path`` to give torchvision (it holds ``cifar-10-batches-py/``).
        md5: file name -> md5 hex digest of each file written in ``root/cifar-10-batches-py``.
        source: the arrays file it was written from.
        sizes: (train, test) image counts.
    """

    root: Path
    md5: dict[str, str]
    source: Path
    sizes: tuple[int, int]

    def warning(self) -> str:
        """The one line that says these are not the official release's files."""
        sizes = "" if self.sizes == OFFICIAL_SIZES else (
            f", {self.sizes[0]:,} train / {self.sizes[1]:,} test images instead of the official 50,000 / 10,000")
        return (f"tad wrap: CIFAR-10 from {self.source} (in {self.root}{sizes}): these pixels are not checked against "
                f"the official release; torchvision's checksum check accepts these files in this run only")


def cifar10_folder(arrays: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Cifar10Folder:
    """Torchvision's CIFAR-10 folder of ``arrays``, written into ``cache_dir/cifar10-<checksum>/`` (atomically: a
    reader sees the whole folder or none), or reused when a folder written from the same file content is there.

    Args:
        arrays: an arrays file :func:`~tad_plugin.data.load_dataset` reads: ``train_images`` uint8 [N, 32, 32, 3]
            (or ``train_jpeg`` / ``train_offsets``, encoded images), ``train_labels`` in 0..9, and the same for
            ``test_``; the train images are split into ``data_batch_1..5`` in their order.
        cache_dir: the folder to keep it in (one sub-folder per file content, keyed by its SHA-256).

    Raises:
        DatasetError: the file is missing or unreadable, or not CIFAR-10-shaped (the message names the array).
    """
    source = Path(arrays).expanduser().resolve()
    if not source.is_file():
        raise DatasetError(f"--cifar10 {arrays}: no such file; give a .npz arrays file (train_images uint8 "
                           f"[N, 32, 32, 3], train_labels, test_images, test_labels)")
    digest = _sha256(source)
    root = Path(cache_dir) / f"cifar10-{digest[:16]}"
    found = _written(root, digest, source)
    if found is not None:
        return found
    try:
        dataset = load_dataset(source)
    except DatasetError as exc:  # name the file where load_dataset's message gives only its stem
        raise DatasetError(str(exc) if str(source) in str(exc) else f"--cifar10 {source}: {exc}") from exc
    _check(dataset, source)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        md5 = write_batches(dataset, tmp / BASE_FOLDER)
        sizes = (len(dataset.train_labels), len(dataset.test_labels))
        atomic_write_json({"sha256": digest, "md5": md5, "sizes": list(sizes)}, tmp / _MANIFEST)
        if root.exists():  # an unreadable or damaged earlier copy
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:  # another run wrote the same folder meanwhile
            found = _written(root, digest, source)
            if found is None:
                raise
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Cifar10Folder(root, md5, source, sizes)


def write_batches(dataset: ImageDataset, folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``dataset`` as torchvision's CIFAR-10 files into ``folder`` (``data_batch_1..5``: the train images
    split in order into five near-equal parts; ``test_batch``; ``batches.meta``: CIFAR-10's class names, whatever
    ``dataset.class_names`` says). Each batch is a pickled dict,
    ``data`` uint8 [n, 3072] (channel-major rows, as released) and ``labels`` (ints). Returns file name -> md5.
    Files are written atomically; the folder is created."""
    folder = Path(folder)
    md5: dict[str, str] = {}

    def write(name: str, obj: dict[str, Any]) -> None:
        data = pickle.dumps(obj, protocol=4)
        atomic_write(folder / name, lambda f: f.write(data))
        md5[name] = hashlib.md5(data).hexdigest()

    def batch(images: Any, labels: Any) -> dict[str, Any]:
        return {"data": np.ascontiguousarray(images.numpy()).reshape(len(images), -1),
                "labels": [int(y) for y in labels]}

    for i, rows in enumerate(np.array_split(np.arange(len(dataset.train_labels)), 5)):
        write(f"data_batch_{i + 1}", batch(dataset.train_images[rows], dataset.train_labels[rows]))
    write("test_batch", batch(dataset.test_images, dataset.test_labels))
    write("batches.meta", {"label_names": list(CLASSES)})
    return md5


@contextlib.contextmanager
def accept_folder(folder: Cifar10Folder) -> Iterator[None]:
    """Within the block, torchvision's CIFAR integrity check (``torchvision.datasets.cifar.check_integrity``,
    which ``CIFAR10`` uses for its batches and ``batches.meta``) checks the files of ``folder`` against the md5s
    they were written with; every other file keeps the official check. Restored on exit."""
    restore = accept(folder)
    try:
        yield
    finally:
        restore()


def accept(folder: Cifar10Folder) -> Callable[[], None]:
    """:func:`accept_folder` without the block: installs the check and returns the function that restores it."""
    from torchvision.datasets import cifar

    original = cifar.check_integrity
    base = (folder.root / BASE_FOLDER).resolve()

    def check_integrity(fpath: str | os.PathLike[str], md5: str | None = None) -> bool:
        path = Path(fpath).resolve()
        if path.parent == base and path.name in folder.md5:
            return bool(original(fpath, folder.md5[path.name]))
        return bool(original(fpath, md5))

    cifar.check_integrity = check_integrity

    def restore() -> None:
        cifar.check_integrity = original

    return restore


def _check(dataset: ImageDataset, source: Path) -> None:
    for split in ("train", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if tuple(images.shape[1:]) != (3, 32, 32):
            n, c, h, w = images.shape
            raise DatasetError(f"{source}: CIFAR-10 images are 32x32 RGB, {split}_images holds [{n}, {h}, {w}, {c}] "
                               f"(uint8 [N, 32, 32, 3] expected)")
        if len(labels) == 0:
            raise DatasetError(f"{source}: {split}_images is empty; CIFAR-10 needs train and test images")
        if int(labels.min()) < 0 or int(labels.max()) >= len(CLASSES):
            raise DatasetError(f"{source}: {split}_labels span [{int(labels.min())}, {int(labels.max())}]; CIFAR-10's "
                               f"labels lie in 0..9")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _written(root: Path, digest: str, source: Path) -> Cifar10Folder | None:
    """The folder at ``root`` if it was written from content ``digest`` and its files are intact, else None."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
        if manifest["sha256"] != digest:
            return None
        md5 = {str(k): str(v) for k, v in manifest["md5"].items()}
        for name, expected in md5.items():
            h = hashlib.md5()
            with open(root / BASE_FOLDER / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            if h.hexdigest() != expected:
                return None
        train, test = manifest["sizes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Cifar10Folder(root, md5, source, (int(train), int(test)))
