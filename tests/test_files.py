import os
import stat

import pytest
import torch

from tad_plugin.files import atomic_torch_save, atomic_write, atomic_write_json, torch_load


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json({"a": 1}, path)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


class _NotOurs:
    """An arbitrary class: a pickle of it is what a safe load must refuse."""


def test_torch_load_says_what_is_wrong_with_the_file(tmp_path):
    good = tmp_path / "good.pt"
    atomic_torch_save({"x": torch.arange(3)}, good)
    assert torch.equal(torch_load(good)["x"], torch.arange(3))
    whole = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "hello.pt").write_text("hello\n")  # torch.load: KeyError: 101
    (tmp_path / "empty.pt").write_bytes(b"")  # torch.load: EOFError with no text
    for name in ("truncated.pt", "text.pt", "hello.pt"):
        with pytest.raises(ValueError, match=r"not a torch file \(no zip archive"):
            torch_load(tmp_path / name)
    with pytest.raises(ValueError, match=r"not a torch file \(empty\)"):
        torch_load(tmp_path / "empty.pt")
    torch.save({"x": _NotOurs()}, tmp_path / "objects.pt")
    with pytest.raises(ValueError, match="objects other than tensors.*not a file written by this library"):
        torch_load(tmp_path / "objects.pt")
    with pytest.raises(FileNotFoundError):
        torch_load(tmp_path / "missing.pt")


def test_bytes_damaged_inside_a_file_are_refused_when_verified(tmp_path):
    """torch.load reads a file whose tensor bytes were overwritten without complaint; verify checks the CRCs."""
    path = tmp_path / "state.pt"
    atomic_torch_save({"a": torch.arange(30000, dtype=torch.float32)}, path)
    damaged = bytearray(path.read_bytes())
    damaged[8000:12000] = bytes(4000)
    path.write_bytes(bytes(damaged))
    assert not torch.equal(torch_load(path)["a"], torch.arange(30000, dtype=torch.float32))  # silently wrong
    with pytest.raises(ValueError, match=r"damaged: its entry \S+ fails the archive's checks"):
        torch_load(path, verify=True)


def test_a_file_cut_at_any_point_is_named_as_truncated(tmp_path):
    """torch.load fails on a cut file as EOFError, RuntimeError or OSError(EINVAL) ("Invalid argument"),
    depending on where the cut falls; every one reads as a truncated copy."""
    whole_path = tmp_path / "whole.pt"
    atomic_torch_save({"a": torch.arange(20000, dtype=torch.float32), "b": list(range(10))}, whole_path)
    whole, cut = whole_path.read_bytes(), tmp_path / "cut.pt"
    kinds = set()
    for n in range(1, len(whole), 997):
        cut.write_bytes(whole[:n])
        try:
            torch.load(cut, weights_only=True)
        except Exception as exc:  # what torch itself raises at this cut
            kinds.add(type(exc).__name__)
        for mmap in (False, True):
            with pytest.raises(ValueError, match=r"no zip archive: a truncated copy"):
                torch_load(cut, mmap=mmap)
    assert "OSError" in kinds  # the case that once leaked as a bare "Invalid argument"


def test_a_corrupt_extractor_or_checkpoint_names_the_file_and_the_fix(tmp_path):
    from tad_plugin.features import ExtractorFileError, load_extractor

    (tmp_path / "ext.pt").write_text("garbage")
    with pytest.raises(ExtractorFileError, match=r"cannot read feature extractor .*ext.pt: not a torch file .*"
                                                 r"Re-create it with `tad features train`"):
        load_extractor(tmp_path / "ext.pt")


def test_a_write_removes_what_a_killed_writer_of_the_same_file_left(tmp_path):
    """A kill mid-write leaves the writer's temporary file (nothing runs after SIGKILL); the next write of that
    file removes it, and leaves alone those of running writers and of other files."""
    import subprocess
    import sys

    from tad_plugin.files import _WRITER

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: no longer running
    orphan = tmp_path / f".x.pt.{_WRITER}-{dead_pid}.abc123.tmp"
    live = tmp_path / f".x.pt.{_WRITER}-{os.getppid()}.def456.tmp"  # pytest's parent process runs
    other = tmp_path / f".y.pt.{_WRITER}-{dead_pid}.abc123.tmp"
    for p in (orphan, live, other):
        p.write_bytes(b"half")
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "x.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.pt", live.name, other.name])
