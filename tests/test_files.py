import os
import stat

import pytest
import torch

from tad_plugin.files import atomic_torch_save, atomic_write, atomic_write_json


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
