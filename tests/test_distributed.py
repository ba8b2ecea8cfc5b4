"""torch.distributed (2 gloo processes on the CPU) gives the one-process results: experts with TAD's dual loop,
distillation (hard labels; soft learned labels with ATT's adaptive length and EMA), evaluation shared by net."""

import dataclasses
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tad_plugin.adapters.mtt import MTT, TrajectoryList
from tad_plugin.engine.distributed import Ranks, init_from_env, shutdown
from tad_plugin.engine.matching import TrajectoryMatcher
from tad_plugin.engine.trajectories import TrajectoryStore

from test_mtt_adapter import tiny_config, tiny_dataset

WORLD = 2


def noisy_data():
    ds = tiny_dataset()
    noisy = ds.train_labels.clone()
    noisy[::5] = (noisy[::5] + 1) % 3  # 20% wrong labels
    return ds, noisy


def config():
    # 4 experts in groups of 1: rank 0 trains experts 0 and 2, rank 1 experts 1 and 3; the dual loop
    # divides after epoch 1 and recalibrates after epochs 3 and 4. batch_syn 4 of 6 images: minibatches
    # of 4 and 2 rows, split 2 + 2 and 1 + 1 over the ranks.
    return tiny_config(True, **{"tad.inner_loop": "true", "tad.features": "pixels", "buffer.epochs": 5,
                                "buffer.num_experts": 4, "buffer.experts_per_group": 1, "tad.anchor_epoch": 3,
                                "tad.anchor_ipc": 2, "tad.anchor_iterations": 2, "distill.batch_syn": 4,
                                "distill.iterations": 4, "eval.num_eval": 3})


def run_all(mtt, root):
    """Experts, distillation (hard labels), a soft-label ATT-style distillation, an evaluation."""
    ds, noisy = noisy_data()
    store = mtt.buffer(ds, noisy, root / "buffer", clean_labels=ds.train_labels)
    hard = mtt.distill(store, ds, noisy, checkpoint=root / "ckpt.pt")
    soft_cfg = dataclasses.replace(mtt.matching_config(), lr_labels=5.0, adaptive_length=True, ema_decay=0.9,
                                   batch_syn=None)
    g = torch.Generator().manual_seed(1)
    matcher = TrajectoryMatcher(mtt.network(ds), soft_cfg, TrajectoryList(store, store.finished()),
                                hard.images, torch.randn(6, 3, generator=g), progress=False, ranks=mtt.ranks)
    soft = matcher.run()
    ev = mtt.evaluate(hard, ds, mtt.preprocessor(ds, store))
    return {"hard": hard, "soft": soft, "eval": ev.accuracies}


def worker(rank, port, root, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    ranks = init_from_env("cpu")
    try:
        assert (ranks.rank, ranks.world_size) == (rank, WORLD)
        res = run_all(MTT(config(), progress=False, ranks=ranks), root)
        torch.save(res, f"{out}.{rank}")
    finally:
        shutdown()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    single = run_all(MTT(config(), progress=False, ranks=Ranks()), tmp / "one")
    # a resumed run: expert 1 is finished already, so the ranks train experts 0, 3 (rank 0) and 2 (rank 1)
    (tmp / "two" / "buffer" / "experts").mkdir(parents=True)
    shutil.copy2(tmp / "one" / "buffer" / "experts" / "expert_00001.pt", tmp / "two" / "buffer" / "experts")
    # fork: the children inherit the imported modules (spawning would re-import torch, seconds per child)
    mp.start_processes(worker, args=(free_port(), tmp / "two", str(tmp / "res")), nprocs=WORLD, join=True,
                       start_method="fork")
    multi = [torch.load(f"{tmp / 'res'}.{r}", weights_only=False) for r in range(WORLD)]
    return tmp, single, multi


def test_a_resumed_run_keeps_the_finished_experts(runs):
    tmp, _, _ = runs
    kept, original = (tmp / d / "buffer" / "experts" / "expert_00001.pt" for d in ("two", "one"))
    assert kept.stat().st_mtime_ns == original.stat().st_mtime_ns  # not retrained, not rewritten


def test_experts_and_dual_loop_are_the_one_process_ones(runs):
    tmp, _, _ = runs
    one, two = TrajectoryStore.open(tmp / "one" / "buffer"), TrajectoryStore.open(tmp / "two" / "buffer")
    assert one.finished() == two.finished() == [0, 1, 2, 3]
    recalibrated = 0
    for i in range(4):
        a, b = one.load_expert(i), two.load_expert(i)
        assert torch.equal(a.trusted, b.trusted) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.label_epochs, b.label_epochs) and torch.equal(a.params, b.params)
        assert not bool(a.trusted[1:].all())  # a division happened
        recalibrated += a.labels.shape[0] > 1
    assert recalibrated  # and the inner loop changed labels
    assert one.final_trust()[0].tolist() == two.final_trust()[0].tolist()
    assert (tmp / "two" / "buffer" / "trust_report.json").read_text() == \
        (tmp / "one" / "buffer" / "trust_report.json").read_text()


def test_distillation_matches_one_process(runs):
    _, single, multi = runs
    for r in range(WORLD):
        for key in ("hard", "soft"):
            a, b = single[key], multi[r][key]
            torch.testing.assert_close(b.images, a.images, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(b.labels, a.labels, rtol=1e-4, atol=1e-5)
            assert b.syn_lr == pytest.approx(a.syn_lr, rel=1e-5)
        torch.testing.assert_close(multi[r]["soft"].ema_images, single["soft"].ema_images, rtol=1e-4, atol=1e-5)
    # the runs learned something: images, soft labels and the step size moved
    first = multi[0]
    assert not torch.equal(first["soft"].labels, torch.randn(6, 3, generator=torch.Generator().manual_seed(1)))
    assert first["hard"].syn_lr != 0.01


def test_evaluation_nets_are_shared_and_gathered(runs):
    _, single, multi = runs
    assert multi[0]["eval"] == multi[1]["eval"] and len(multi[0]["eval"]) == 3
    # net 0 and net 2 ran on rank 0 with the one-process seed: they are a one-process run of 2 nets
    ds, _ = noisy_data()
    mtt = MTT(config(), progress=False, ranks=Ranks())
    mtt.config.eval.num_eval = 2
    store = TrajectoryStore.open(runs[0] / "one" / "buffer")
    two_nets = mtt.evaluate(multi[0]["hard"], ds, mtt.preprocessor(ds, store)).accuracies
    assert (multi[0]["eval"][0], multi[0]["eval"][2]) == pytest.approx(two_nets)
    assert len(single["eval"]) == 3
