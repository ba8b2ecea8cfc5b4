"""Trajectory store: save/load round trips, resume checks, corrupt files, the upstream export."""

import json

import pytest
import torch

from tad_plugin.engine.convnet import ConvNet, ConvNetConfig, flatten, init_params, load_flat
from tad_plugin.engine.trajectories import (
    ExpertRecord,
    TrajectoryError,
    TrajectoryStore,
    load_upstream_buffer,
    split_flat,
)

CFG = ConvNetConfig(in_channels=1, num_classes=3, image_size=(8, 8), width=4, depth=2)
T, N = 3, 20


def make_record(index: int, tad: bool = True) -> ExpertRecord:
    g = torch.Generator().manual_seed(index)
    params = torch.cat([init_params(CFG, 1, g) + 0.01 * t for t in range(T + 1)])
    labels = torch.randint(0, 3, (2, N), generator=g)
    return ExpertRecord(
        index=index, params=params, test_acc=torch.rand(T, generator=g), train_loss=torch.rand(T, generator=g),
        trusted=torch.rand(T, N, generator=g) > 0.3 if tad else None,
        thresholds=torch.rand(T, 3, generator=g) if tad else None,
        label_epochs=torch.tensor([0, 2]), labels=labels, seed=100 + index)


def make_store(root, **meta):
    return TrajectoryStore.create(root, param_shapes=CFG.param_shapes, epochs=T, num_train=N, num_classes=3,
                                  meta=meta or {"lr": 0.01},
                                  preprocess_state={"mean": torch.ones(1), "kind": "meanstd"})


def test_save_load_round_trip(tmp_path):
    store = make_store(tmp_path / "s")
    rec = make_record(4)
    store.save_expert(rec)
    back = TrajectoryStore.open(tmp_path / "s").load_expert(4)
    for name in ("params", "test_acc", "train_loss", "trusted", "thresholds", "label_epochs", "labels"):
        assert torch.equal(getattr(back, name), getattr(rec, name)), name
    assert back.seed == 104 and back.epochs == T
    assert torch.equal(back.labels_at(0), rec.labels[0]) and torch.equal(back.labels_at(1), rec.labels[0])
    assert torch.equal(back.labels_at(2), rec.labels[1])
    assert torch.equal(store.trajectory(4), rec.params)
    assert store.preprocess_state()["kind"] == "meanstd"
    # everything is loadable without pickle code execution
    payload = torch.load(store.expert_path(4), weights_only=True)
    assert payload["trusted_packed"].dtype == torch.uint8  # bit-packed


def test_test_accuracy_stacks_the_experts_curves_in_the_order_asked(tmp_path):
    store = make_store(tmp_path)
    with pytest.raises(TrajectoryError, match="no finished experts; run `tad buffer` first"):
        store.test_accuracy()
    records = [make_record(i) for i in (0, 2)]
    for rec in records:
        store.save_expert(rec)
    assert torch.equal(store.test_accuracy(), torch.stack([r.test_acc for r in records]))
    assert torch.equal(store.test_accuracy([2]), records[1].test_acc[None])


def test_record_without_tad(tmp_path):
    store = make_store(tmp_path)
    store.save_expert(make_record(0, tad=False))
    back = store.load_expert(0)
    assert back.trusted is None and back.thresholds is None


def test_finished_lists_complete_files_only(tmp_path):
    store = make_store(tmp_path)
    store.save_expert(make_record(2))
    store.save_expert(make_record(0))
    (tmp_path / "experts" / ".expert_00001.pt.abc.tmp").write_bytes(b"partial")  # a killed write
    assert store.finished() == [0, 2] and len(store) == 2


def test_resume_requires_same_settings(tmp_path):
    make_store(tmp_path, lr=0.01).save_expert(make_record(0))
    again = make_store(tmp_path, lr=0.01)
    assert again.finished() == [0]
    with pytest.raises(TrajectoryError, match=r"meta.lr: 0.01 -> 0.1.*another output directory"):
        make_store(tmp_path, lr=0.1)


def test_a_store_killed_before_its_transform_was_written_gets_it_on_resume(tmp_path):
    make_store(tmp_path)
    (tmp_path / "preprocess.pt").unlink()  # the manifest written, the kill before the transform (older versions)
    assert make_store(tmp_path).preprocess_state()["kind"] == "meanstd"
    (tmp_path / "preprocess.pt").unlink()
    TrajectoryStore.create(tmp_path, param_shapes=CFG.param_shapes, epochs=T, num_train=N, num_classes=3,
                           meta={"lr": 0.01}, preprocess_state={"kind": "meanstd"}, dry_run=True)
    assert not (tmp_path / "preprocess.pt").exists()  # a dry run writes nothing


def test_a_damaged_transform_names_the_file_and_a_fix_that_keeps_the_experts(tmp_path):
    # the message once said to delete the whole store and retrain, for a file the next buffer run writes again
    store = make_store(tmp_path)
    store.save_expert(make_record(0))
    path = tmp_path / "preprocess.pt"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(TrajectoryError, match=rf"cannot load {path}: .*; delete that file and rerun the command "
                                              r"that trained the experts: .* keeps the experts"):
        store.preprocess_state()
    path.unlink()  # the fix: the resumed store gets its transform again, and its expert stays
    again = make_store(tmp_path)
    assert again.preprocess_state()["kind"] == "meanstd" and again.finished() == [0]


def test_bad_records_and_files(tmp_path):
    store = make_store(tmp_path)
    rec = make_record(1)
    bad = ExpertRecord(**{**rec.__dict__, "params": rec.params[:-1]})
    with pytest.raises(TrajectoryError, match="params must be"):
        store.save_expert(bad)
    nan = ExpertRecord(**{**rec.__dict__, "params": rec.params * float("nan")})
    with pytest.raises(TrajectoryError, match="diverged"):
        store.save_expert(nan)
    store.expert_path(3).parent.mkdir(parents=True, exist_ok=True)
    store.expert_path(3).write_bytes(b"not a zip")
    with pytest.raises(TrajectoryError, match="delete the file and rerun the command that trained the experts"):
        store.load_expert(3)
    with pytest.raises(TrajectoryError, match="not in"):
        store.load_expert(7)
    store.save_expert(rec)
    store.expert_path(2).write_bytes(store.expert_path(1).read_bytes())  # expert 1's file under 2's name
    for read in (store.load_expert, store.trajectory, lambda i: store.final_trust([i])):
        with pytest.raises(TrajectoryError, match=r"expert_00002.pt holds expert 1, not expert 2; delete it"):
            read(2)
    with pytest.raises(TrajectoryError, match="no manifest.json"):
        TrajectoryStore.open(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/0"}))
    with pytest.raises(TrajectoryError, match="expected 'tad_plugin.trajectories/1'"):
        TrajectoryStore.open(tmp_path)
    for other in ([], {}):  # valid JSON, not a manifest
        (tmp_path / "manifest.json").write_text(json.dumps(other))
        with pytest.raises(TrajectoryError, match=r"manifest.json is not a trajectory store's manifest .*delete"):
            TrajectoryStore.open(tmp_path)


def test_export_upstream_layout(tmp_path):
    store = make_store(tmp_path / "s")
    recs = [make_record(i) for i in range(3)]
    for r in recs:
        store.save_expert(r)
    paths = store.export_upstream(tmp_path / "up", per_file=2)
    assert [p.name for p in paths] == ["replay_buffer_0.pt", "replay_buffer_1.pt"]
    # load as the official distill scripts do: a list of trajectories of snapshots of tensors
    buf0 = torch.load(paths[0], weights_only=True)
    buf1 = torch.load(paths[1], weights_only=True)
    assert len(buf0) == 2 and len(buf1) == 1
    net = ConvNet(CFG)
    expected_shapes = [tuple(p.shape) for p in net.parameters()]
    for traj, rec in zip(buf0 + buf1, recs):
        assert isinstance(traj, list) and len(traj) == T + 1
        for t, snap in enumerate(traj):
            assert isinstance(snap, list) and [tuple(p.shape) for p in snap] == expected_shapes
            assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in snap)
            # parameters() order: copying the snapshot into a module reproduces the flat vector
            with torch.no_grad():
                for p, v in zip(net.parameters(), snap):
                    p.copy_(v)
            assert torch.equal(flatten(net), rec.params[t])
    flat = load_upstream_buffer(paths[0])
    assert torch.equal(flat[1], recs[1].params)


def test_split_flat_matches_module_order():
    flat = init_params(CFG, 1, torch.Generator().manual_seed(0))[0]
    parts = split_flat(flat, CFG.param_shapes)
    net = load_flat(ConvNet(CFG), flat)
    assert all(torch.equal(a, b) for a, b in zip(parts, net.parameters()))
    with pytest.raises(TrajectoryError, match="do not match"):
        split_flat(flat[:-1], CFG.param_shapes)


def test_export_needs_experts(tmp_path):
    with pytest.raises(TrajectoryError, match="no finished experts"):
        make_store(tmp_path).export_upstream(tmp_path / "up")
