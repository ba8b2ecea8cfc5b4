"""Crash-safe file writing: every file the library writes goes through :func:`atomic_write`."""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
import socket
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import TADError

__all__ = ["atomic_write", "atomic_torch_save", "atomic_write_json", "torch_load", "not_a_zip", "OutputPathError",
           "output_file", "output_folder"]


class OutputPathError(TADError, ValueError):
    """An output path that cannot be written: a folder where a file is wanted, or a file where a folder is."""


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` that is not a folder (nothing can be created under it), or None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as the file an option (e.g. ``"--out"``) names, checked before any work: not a folder and not under
    a file. Raises :class:`OutputPathError` naming the option and the fix."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give the path of the file to write (it may lie in "
                              f"that folder)")
    if (blocker := _file_above(path)) is not None:
        raise OutputPathError(f"{option} {path}: {blocker} is a file, not a folder; give a path under a folder")
    return path


def output_folder(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as the folder an option (e.g. ``"--to"``) names, checked before any work: not a file and not under a
    file. Raises :class:`OutputPathError` naming the option and the fix."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file, not a folder; name a new folder or an existing one")
    if (blocker := _file_above(path)) is not None:
        raise OutputPathError(f"{option} {path}: {blocker} is a file, not a folder; give a path under a folder")
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and an exception (or a kill) leaves any earlier file at
    ``path`` untouched. Parent directories are created. The temporary file is named for its writer
    (``.<name>.<host>-<pid>.<random>.tmp``); the temporary files of ``path`` whose writer on this machine is
    no longer running (killed mid-write) are removed first.

    Raises:
        OSError: the machine refused (a full disk, a read-only folder, ...); its ``filename`` is ``path`` and its
            message says how many bytes of the file had been written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_WRITER}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror or exc} (creating {path})", str(path)) from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror or exc} (writing {path}: {written:,} bytes written before it "
                                 f"failed)", str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The machine part of a temporary file's name (no dots or dashes, which separate the name's parts).
_WRITER = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _remove_orphans(path: Path) -> None:
    """Delete the temporary files of ``path`` that a process of this machine, no longer running, left behind."""
    prefix = f".{path.name}.{_WRITER}-"
    for tmp in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts: signal 0 is then refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_write`. Save only tensors, numbers, strings, lists and dicts
    so that the file loads with ``torch.load(..., weights_only=True)``."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_write`."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def not_a_zip(path: str | os.PathLike[str]) -> str | None:
    """Why the existing file ``path`` is no zip archive (torch files and ``.npz`` are): ``"empty"`` or ``"no zip
    archive: a truncated copy, or another format"``; None when it is one."""
    if zipfile.is_zipfile(path):
        return None
    return "empty" if Path(path).stat().st_size == 0 else "no zip archive: a truncated copy, or another format"


def torch_load(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False,
               verify: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` whose failure says what is wrong with the file.

    Args:
        verify: first check every stored member against its CRC-32 (torch.load does not): bytes damaged inside
            the file are then refused instead of loaded. It reads the whole file once more, so it is meant for
            state that a run resumes from, not for files read over and over.

    Raises:
        ValueError: the file is not a torch zip archive (a truncated copy, or another format), it fails its
            checksums (with ``verify``), or it holds objects other than tensors, numbers, strings, lists and
            dicts (not a file this library or upstream's scripts wrote); torch's own message would advise
            ``weights_only=False``, which would run whatever code such a file carries. Callers add which file it
            is and the fix.
        Any other error of ``torch.load`` (a missing file: FileNotFoundError) unchanged.
    """
    import torch

    if verify and Path(path).is_file() and not_a_zip(path) is None:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # a damaged header or local entry
            bad = f"({exc})"
        if bad is not None:
            raise ValueError(f"damaged: its entry {bad} fails the archive's checks (bytes changed on disk or in a "
                             f"copy)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # an empty, truncated or foreign file fails as EOFError, KeyError, OSError(EINVAL), ...
        if Path(path).is_file() and (why := not_a_zip(path)) is not None:
            raise ValueError(f"not a torch file ({why})") from exc
        if isinstance(exc, pickle.UnpicklingError):
            raise ValueError("it holds objects other than tensors, numbers, strings, lists and dicts, which a safe "
                             "load refuses (not a file written by this library)") from exc
        raise
