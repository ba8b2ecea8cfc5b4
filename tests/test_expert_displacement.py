"""reproduction/expert_displacement.py: displacement by hand on a store with known snapshots, and the CLI."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tad_plugin.engine.trajectories import ExpertRecord, TrajectoryStore

SCRIPT = Path(__file__).resolve().parents[1] / "reproduction" / "expert_displacement.py"
spec = importlib.util.spec_from_file_location("expert_displacement", SCRIPT)
ed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ed)


def _store(root, steps):
    """A store of experts whose parameters move by the given per-epoch vectors (P = 2, T = 3)."""
    store = TrajectoryStore.create(root, param_shapes=[(2,)], epochs=3, num_train=4, num_classes=2, meta={})
    for i, step in enumerate(steps):
        params = torch.cumsum(torch.cat([torch.zeros(1, 2), torch.tensor(step, dtype=torch.float32)]), 0)
        store.save_expert(ExpertRecord(i, params, torch.zeros(3), torch.zeros(3), None, None,
                                       torch.zeros(1, dtype=torch.int64), torch.zeros(1, 4, dtype=torch.int64), i))
    return store


def test_displacement_by_hand(tmp_path):
    store = _store(tmp_path / "a", [[[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])
    d = ed.displacement(store, 2)
    # expert 0: epochs 0->2 moves (3, 5), 1->3 moves (1, 1); expert 1: (0, 2), (0, 4)
    assert torch.allclose(d, torch.tensor([[34 ** 0.5, 2 ** 0.5], [2.0, 4.0]], dtype=torch.float64))
    assert torch.allclose(ed.displacement(store, 1)[0], torch.tensor([5.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expert_epochs must be in \[1, 3\]"):
        ed.displacement(store, 4)


def test_cli_compares_stores(tmp_path, capsys):
    slow = _store(tmp_path / "slow", [[[1.0, 0.0]] * 3])
    fast = _store(tmp_path / "fast", [[[2.0, 0.0]] * 3])
    ed.main([str(slow.root), str(fast.root), "--expert-epochs", "2", "--out", str(tmp_path / "d.json")])
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["expert_epochs"] == 2
    assert res["buffers"][str(slow.root)]["mean"] == [2.0, 2.0] and res["buffers"][str(fast.root)]["mean"] == [4.0, 4.0]
    assert "| t=0 | t=1 |" in capsys.readouterr().out
