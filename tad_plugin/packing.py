"""Move an image dataset between machines as a few checksummed parts: ``tad data pack`` / ``tad data unpack``.

``pack`` turns an ImageFolder directory (Tiny ImageNet's ``tiny-imagenet-200/`` included: the layouts of
:func:`tad_plugin.data.list_image_folder`) into an encoded arrays file (:data:`tad_plugin.data.ENCODED_KEYS`:
the image files' own bytes back to back with their offsets, the labels and ``class_names``; nothing is
re-encoded, so no pixel changes), cut into parts of at most ``part_mib`` MiB, plus a manifest::

    OUT/<name>.parts.json          format, sizes and SHA-256 of the whole file and of every part
    OUT/<name>.npz.part000 ...     the parts

``unpack`` checks every part against the manifest (a missing, truncated or altered part is named, with the
fix), joins them and writes either the decoded arrays file (uint8 pixels, what :func:`tad_plugin.data.load_dataset`
reads fastest) or, with ``encoded=True``, the joined encoded file (which ``load_dataset`` also reads, decoding
on every load). Every file is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .data import DatasetError, ImageDataset, decode_images, list_image_folder, load_dataset, save_arrays
from .files import atomic_write, atomic_write_json, output_file, output_folder

__all__ = ["pack_image_folder", "unpack", "add_subcommand", "FORMAT", "DEFAULT_PART_MIB"]

#: The manifest's ``format`` value; :func:`unpack` refuses others.
FORMAT = "tad-plugin-parts/1"
#: Default part size in MiB: one part plus the code that travels with it fit a 64 MiB upload.
DEFAULT_PART_MIB = 52


def pack_image_folder(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      part_mib: float = DEFAULT_PART_MIB, progress: bool = True) -> Path:
    """Pack an ImageFolder directory into checksummed parts of an encoded arrays file.

    Args:
        source: the dataset directory (labels, class order and held-out split as
            :func:`~tad_plugin.data.list_image_folder` defines them).
        out_dir: folder for the manifest and the parts (created; earlier parts of the same name are replaced).
        part_mib: largest part in MiB (> 0).
        progress: show progress bars.

    Returns:
        The manifest's path, ``out_dir/<source name>.parts.json``.

    Raises:
        DatasetError: the directory is missing or malformed (see ``list_image_folder``), or a file is unreadable,
            does not decode as an image, or differs in size from the first image (checked before any part is
            written).
        ValueError: ``part_mib`` <= 0.
    """
    from tqdm import tqdm

    if part_mib <= 0:
        raise ValueError(f"part_mib must be > 0, got {part_mib}")
    source, out_dir = Path(source), output_folder(out_dir, "the output folder")
    if not source.is_dir():
        raise DatasetError(f"{source} is not a directory; pack takes an ImageFolder directory such as "
                           f"tiny-imagenet-200/")
    index = list_image_folder(source)
    arrays: dict[str, Any] = {"class_names": np.array(index.classes)}  # Any: as save_arrays
    image_size = None  # (H, W): the test images must have the training images' size
    for split, items in (("train", index.train), ("test", index.test)):
        blobs = []
        for p, _ in tqdm(items, desc=f"read {split}", unit="img", disable=not progress):
            try:
                blobs.append(p.read_bytes())
            except OSError as exc:
                raise DatasetError(f"cannot read image {p}: {exc}") from exc
        image_size = _check_decodes(blobs, [p for p, _ in items], source, f"check {split}" if progress else None,
                                    image_size)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array([y for _, y in items], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getbuffer()
    size = max(1, int(part_mib * 2**20))
    name = source.name
    parts = []
    for k, start in enumerate(tqdm(range(0, len(data), size), desc="write parts", unit="part", disable=not progress)):
        chunk = data[start:start + size]
        part = f"{name}.npz.part{k:03d}"
        atomic_write(out_dir / part, _writer(chunk))
        parts.append({"file": part, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {
        "format": FORMAT, "name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "classes": len(index.classes), "train_images": len(index.train), "test_images": len(index.test),
        "parts": parts,
    }
    path = out_dir / f"{name}.parts.json"
    atomic_write_json(manifest, path)
    return path


#: Images decoded at a time by :func:`_check_decodes` (bounds its memory: 4096 RGB 64 x 64 images are 50 MB).
_CHECK_CHUNK = 4096


def _check_decodes(blobs: list[bytes], files: list[Path], source: Path, progress: str | None,
                   size: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """Decode every image once, a chunk at a time, so that a corrupt file or one of another size (than the
    first, or than ``size``: (H, W) of the other split) is named (with its path) here rather than on the machine
    that unpacks the parts; returns the images' (H, W), None for no images. Raises :class:`DatasetError`."""
    from tqdm import tqdm

    with tqdm(total=len(blobs), desc=progress, unit="img", disable=progress is None) as bar:
        for start in range(0, len(blobs), _CHECK_CHUNK):
            end = min(start + _CHECK_CHUNK, len(blobs))
            images = decode_images(blobs[start:end], end - start, str(source), names=[str(f) for f in files[start:end]])
            if size is None:
                size = tuple(images.shape[2:])
            elif tuple(images.shape[2:]) != size:
                raise DatasetError(f"{source}: image {files[start]} is {images.shape[3]}x{images.shape[2]} but the "
                                   f"first image is {size[1]}x{size[0]}; resize the images to one size")
            bar.update(end - start)
    return size


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; pass the <name>.parts.json that `tad data pack` "
                                f"wrote beside the parts")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc}; copy it again from the packing machine") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a manifest of `tad data pack` (format {FORMAT!r})")
    fields = {"name": str, "bytes": int, "sha256": str, "parts": list}
    part_fields = {"file": str, "bytes": int, "sha256": str}
    bad = [k for k, t in fields.items() if not isinstance(manifest.get(k), t) or isinstance(manifest.get(k), bool)]
    bad += [f"parts[{i}].{k}" for i, part in enumerate(manifest.get("parts") or []) for k, t in part_fields.items()
            if not isinstance(part, dict) or not isinstance(part.get(k), t) or isinstance(part.get(k), bool)]
    if bad or not manifest["parts"]:
        raise DatasetError(f"{path}: {', '.join(bad[:4]) or 'parts'} missing or of the wrong type (an edited or "
                           f"damaged manifest); copy it again from the packing machine")
    return manifest


def _writer(data: bytes | bytearray | memoryview) -> Callable[[IO[bytes]], int]:
    """An :func:`atomic_write` callback that writes ``data``."""
    return lambda f: f.write(data)


def unpack(manifest_path: str | os.PathLike[str], out: str | os.PathLike[str], encoded: bool = False,
           progress: bool = True) -> ImageDataset | None:
    """Check, join and decode the parts listed in a manifest of :func:`pack_image_folder`.

    Args:
        manifest_path: the ``<name>.parts.json``; the parts are read from its folder.
        out: the ``.npz`` to write: decoded pixels (``train_images`` uint8 [N, H, W, 3], ...) by default.
        encoded: write the joined encoded file instead of decoding it (no decoding here; every
            ``load_dataset`` of it decodes).
        progress: show progress bars.

    Returns:
        The decoded dataset (None with ``encoded``).

    Raises:
        FileNotFoundError: the manifest or a part is missing.
        DatasetError: a part of the wrong size or checksum, or a manifest or joined file that does not read.
    """
    from tqdm import tqdm

    manifest_path, out = Path(manifest_path), output_file(out, "the output")
    if out.suffix != ".npz":
        raise ValueError(f"the output must be a .npz file (load_dataset knows arrays files by it), got {out}")
    manifest = _read_manifest(manifest_path)
    folder = manifest_path.parent
    again = "copy it again from the packing machine (or pack again)"
    joined = bytearray()
    for part in tqdm(manifest["parts"], desc="check parts", unit="part", disable=not progress):
        file = folder / part["file"]
        if not file.is_file():
            raise FileNotFoundError(f"part {file} is missing ({len(manifest['parts'])} parts listed in "
                                    f"{manifest_path.name}); {again}")
        chunk = file.read_bytes()
        if len(chunk) != part["bytes"]:
            raise DatasetError(f"part {file} has {len(chunk)} bytes but the manifest says {part['bytes']} "
                               f"(a truncated copy); {again}")
        if hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise DatasetError(f"part {file} does not match its SHA-256 in {manifest_path.name} (a corrupt copy); "
                               f"{again}")
        joined += chunk
    if len(joined) != manifest["bytes"] or hashlib.sha256(joined).hexdigest() != manifest["sha256"]:
        raise DatasetError(f"the joined parts do not match {manifest_path.name} (parts of different packs mixed); "
                           f"{again}")
    if encoded:
        atomic_write(out, _writer(joined))
        return None
    tmp = out.with_name(f".{out.stem}.encoded.npz")
    try:  # decode through the loader itself: one reader for encoded files
        atomic_write(tmp, _writer(joined))
        del joined
        dataset = load_dataset(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    dataset = ImageDataset(manifest["name"], dataset.train_images, dataset.train_labels, dataset.test_images,
                           dataset.test_labels, dataset.class_names)
    save_arrays(dataset, out)
    return dataset


def add_subcommand(subparsers: Any) -> None:
    """Add ``data`` (with ``pack`` and ``unpack``) to the ``tad`` sub-parsers; each leaf parser's ``func`` is
    its handler, which takes the parsed ``args`` and returns an exit code."""
    data = subparsers.add_parser("data", help="pack a dataset directory into upload-sized parts, or unpack them")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("pack", help="an ImageFolder directory (e.g. tiny-imagenet-200/) -> checksummed parts",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", metavar="SRC", help="the dataset directory")
    p.add_argument("out", metavar="OUT_DIR", help="folder for <name>.parts.json and <name>.npz.partNNN")
    p.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB, help="largest part, MiB")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_pack_command)
    p = sub.add_parser("unpack", help="check and join the parts, decode them into one .npz arrays file")
    p.add_argument("manifest", metavar="MANIFEST", help="the <name>.parts.json written by `tad data pack`")
    p.add_argument("out", metavar="OUT.npz", help="arrays file to write (what --dataset then takes)")
    p.add_argument("--encoded", action="store_true", help="write the joined encoded images instead of pixels "
                   "(smaller; decoded on every load)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_unpack_command)


def _pack_command(args: argparse.Namespace) -> int:
    path = pack_image_folder(args.source, args.out, part_mib=args.part_mib, progress=not args.no_progress)
    m = json.loads(path.read_text())
    print(f"wrote {path} and {len(m['parts'])} parts ({m['bytes'] / 2**20:.1f} MiB in all, largest "
          f"{max(p['bytes'] for p in m['parts']) / 2**20:.1f} MiB): {m['train_images']} train and "
          f"{m['test_images']} test images of {m['classes']} classes")
    return 0


def _unpack_command(args: argparse.Namespace) -> int:
    dataset = unpack(args.manifest, args.out, encoded=args.encoded, progress=not args.no_progress)
    if dataset is None:
        print(f"wrote {args.out} (encoded images)")
    else:
        h, w = dataset.image_size
        print(f"wrote {args.out}: {len(dataset.train_labels)} train and {len(dataset.test_labels)} test images, "
              f"{h}x{w} RGB, {dataset.num_classes} classes")
    return 0
