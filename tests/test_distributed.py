"""torch.distributed (2 gloo processes on the CPU) gives the one-process results: `tad run` (experts with TAD's
dual loop, distillation, evaluation), a soft-label distillation (learned labels, ATT's adaptive length, EMA),
DATM's pipeline (expert-chosen images and soft labels, label momentum, loss gate, growing window, EMA evaluated
from the raw images' nets), evaluation nets shared by rank, and a resumed expert run."""

import copy
import dataclasses
import datetime
import json
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_mtt_adapter import tiny_dataset

from tad_plugin.adapters.datm import DATM
from tad_plugin.adapters.mtt import MTT
from tad_plugin.cli import build_parser, config_from_args, main
from tad_plugin.data import load_dataset, save_arrays
from tad_plugin.engine.distributed import Ranks, rank_device
from tad_plugin.engine.matching import TrajectoryMatcher
from tad_plugin.engine.pipeline import TrajectoryList, load_distilled
from tad_plugin.engine.trajectories import TrajectoryStore

WORLD = 2
# 4 experts in groups of 1 (rank 0 trains experts 0 and 2, rank 1 experts 1 and 3); the dual loop divides
# after epoch 1 and recalibrates after epochs 3 and 4 (fixed vote rule: on these 60 images the calibrated
# bar changes no label). batch_syn 4 of 6 images: minibatches of 4 and 2 rows, split 2 + 2 and 1 + 1 over
# the ranks. 3 evaluation nets: 2 on rank 0, 1 on rank 1.
SETS = ["model.width=4", "model.depth=2", "buffer.num_experts=4", "buffer.epochs=5", "buffer.batch_size=10",
        "buffer.experts_per_group=1", "tad.warmup_epochs=1", "tad.features=pixels", "tad.anchor_epoch=3",
        "tad.anchor_ipc=2", "tad.anchor_iterations=2", "tad.vote_threshold=fixed", "tad.num_neighbors=5",
        "distill.ipc=2", "distill.iterations=4", "distill.syn_steps=2", "distill.max_start_epoch=1",
        "distill.expert_epochs=2", "distill.batch_syn=4", "eval.num_eval=3", "eval.epochs=3"]


def cli_args(data, out):
    return ["run", "--dataset", str(data), "--noise", "symmetric", "--noise-rate", "0.2", "--device", "cpu",
            "--out", str(out), "--no-progress", *[a for s in SETS for a in ("--set", s)]]


def run_all(data, out):
    """`tad run`, then through the library (in the same processes) a soft-label distillation and an evaluation."""
    args = cli_args(data, out)
    assert main(args) == 0
    mtt = MTT(config_from_args(build_parser().parse_args(args)), progress=False)  # ranks: the process group
    ds = load_dataset(str(data))
    store = TrajectoryStore.open(out / "buffer")
    hard, pre = load_distilled(out / "distilled.pt")
    soft_cfg = dataclasses.replace(mtt.matching_config(), lr_labels=5.0, adaptive_length=True, ema_decay=0.9,
                                   batch_syn=None)
    soft_init = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    matcher = TrajectoryMatcher(mtt.network(ds), soft_cfg, TrajectoryList(store, store.finished()),
                                hard.images, soft_init, progress=False, ranks=mtt.ranks)
    explicit = TrajectoryMatcher(mtt.network(ds), dataclasses.replace(soft_cfg, batch_syn=4, inner_grad="explicit"),
                                 TrajectoryList(store, store.finished()), hard.images, soft_init, progress=False,
                                 ranks=mtt.ranks)
    return {"hard": hard, "soft": matcher.run(), "soft_init": soft_init, "explicit": explicit.run(),
            "eval": mtt.evaluate(hard, ds, pre).accuracies, "datm": run_datm(mtt.config, ds, store, pre)}


def run_datm(config, ds, store, pre):
    """DATM's distillation of the run's experts with every matching feature on, evaluated during it."""
    cfg = copy.deepcopy(config)
    cfg.method = "datm"
    d = cfg.distill
    d.pix_init, d.window_start, d.window_growth_iterations = "samples_predicted_correctly", 1, 2
    d.lr_labels, d.label_momentum, d.loss_gate, d.ema_decay, d.ema_eval_reuses_raw_net = 5.0, 0.5, 0.92, 0.9, True
    d.batch_syn, d.eval_every = 5, 2  # minibatches of 5 and 1 rows: rank 1 gets none of the second
    datm = DATM(cfg, progress=False)
    return datm.distill(store, ds, evaluator=datm.evaluator(ds, pre))


def worker(rank, port, data, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    # as torchrun's environment says (a deadlock fails after 2 minutes); `tad run` joins it and leaves it open
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=2))
    try:
        torch.save(run_all(data, root), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if "fork" not in mp.get_all_start_methods() or not dist.is_available():
        pytest.skip("needs fork and torch.distributed (gloo)")
    tmp = tmp_path_factory.mktemp("dist")
    save_arrays(tiny_dataset(), tmp / "tiny.npz")
    single = run_all(tmp / "tiny.npz", tmp / "one")
    # the two-process run resumes: expert 1 is finished, so rank 0 trains experts 0 and 3, rank 1 expert 2
    (tmp / "two" / "buffer" / "experts").mkdir(parents=True)
    shutil.copy2(tmp / "one" / "buffer" / "experts" / "expert_00001.pt", tmp / "two" / "buffer" / "experts")
    # fork: the children inherit the imported modules (spawning would re-import torch, seconds per child)
    mp.start_processes(worker, args=(free_port(), tmp / "tiny.npz", tmp / "two", str(tmp / "res")), nprocs=WORLD,
                       join=True, start_method="fork")
    multi = [torch.load(f"{tmp / 'res'}.{r}", weights_only=False) for r in range(WORLD)]
    return tmp, single, multi


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
    assert (tmp / "two" / "buffer" / "trust_report.json").read_text() == \
        (tmp / "one" / "buffer" / "trust_report.json").read_text()


def test_a_resumed_run_keeps_the_finished_experts(runs):
    tmp, _, _ = runs
    kept, original = (tmp / d / "buffer" / "experts" / "expert_00001.pt" for d in ("two", "one"))
    assert kept.stat().st_mtime_ns == original.stat().st_mtime_ns  # not retrained, not rewritten


def test_distillation_matches_one_process(runs):
    _, single, multi = runs
    for r in range(WORLD):
        for key in ("hard", "soft", "explicit"):  # explicit: the written-out student gradient, batch split 2 + 2
            a, b = single[key], multi[r][key]
            torch.testing.assert_close(b.images, a.images, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(b.labels, a.labels, rtol=1e-4, atol=1e-5)
            assert b.syn_lr == pytest.approx(a.syn_lr, rel=1e-5)
        torch.testing.assert_close(multi[r]["soft"].ema_images, single["soft"].ema_images, rtol=1e-4, atol=1e-5)
    # images, soft labels and the step size were learned
    soft = multi[0]["soft"]
    assert not torch.allclose(soft.labels, multi[0]["soft_init"]) and soft.syn_lr != multi[0]["hard"].syn_lr


def test_tad_run_under_two_processes_writes_one_record(runs):
    tmp, single, multi = runs
    record = json.loads((tmp / "two" / "result_run.json").read_text())
    assert record["processes"] == 2 and json.loads((tmp / "one" / "result_run.json").read_text())["processes"] == 1
    assert record["results"]["test_acc"] == pytest.approx(list(multi[0]["eval"]))
    assert len(record["results"]["test_acc"]) == 3


def test_evaluation_nets_are_shared_and_gathered(runs):
    tmp, _, multi = runs
    assert multi[0]["eval"] == multi[1]["eval"] and len(multi[0]["eval"]) == 3
    # nets 0 and 2 ran on rank 0 with the one-process seed: they are a one-process evaluation of 2 nets
    args = build_parser().parse_args(cli_args(tmp / "tiny.npz", tmp / "one"))
    mtt = MTT(config_from_args(args), progress=False, ranks=Ranks())
    mtt.config.eval.num_eval = 2
    hard, pre = load_distilled(tmp / "two" / "distilled.pt")
    two_nets = mtt.evaluate(hard, load_dataset(str(tmp / "tiny.npz")), pre).accuracies
    assert (multi[0]["eval"][0], multi[0]["eval"][2]) == pytest.approx(two_nets)


def test_rows_and_shares_cover_everything_once():
    for world in (1, 2, 3):
        ranks = [Ranks(r, world, r) for r in range(world)]
        rows = [list(range(7))[r.rows(7)] for r in ranks]
        assert sum(rows, []) == list(range(7)) and max(map(len, rows)) - min(map(len, rows)) <= 1
        assert sorted(sum((r.share(range(7)) for r in ranks), [])) == list(range(7))
    assert [Ranks(r, 3).rows(2) for r in range(3)] == [slice(0, 1), slice(1, 2), slice(2, 2)]
    with pytest.raises(ValueError, match="outside"):
        Ranks(2, 2)


def test_each_process_gets_its_own_gpu():
    assert rank_device("cpu", Ranks(1, 2, 1)) == torch.device("cpu")
    assert rank_device("cuda", Ranks(1, 2, 1)) == torch.device("cuda", 1)
    assert rank_device("cuda:3", Ranks()) == torch.device("cuda", 3)  # one process: as asked
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:0", Ranks(1, 2, 1))


def test_datm_distillation_matches_one_process(runs):
    _, single, multi = runs
    a = single["datm"]
    losses = [h for h in a.history if "loss" in h]
    assert a.labels.is_floating_point() and a.ema_images is not None and not torch.equal(a.ema_images, a.images)
    for r in range(WORLD):
        b = multi[r]["datm"]
        for key in ("images", "labels", "ema_images"):
            torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-4, atol=1e-5)
        assert b.syn_lr == pytest.approx(a.syn_lr, rel=1e-5)
        got = [h for h in b.history if "loss" in h]
        assert len(got) == len(losses)
        for g, w in zip(got, losses):  # pytest.approx takes flat dicts only (pytest >= 9 refuses lists of them)
            assert g == pytest.approx(w, rel=1e-4)
    # every evaluation (raw, then EMA from the raw images' nets) gathered the same 3 nets on both ranks
    evals = [h for h in multi[0]["datm"].history if "eval" in h]
    assert [h["iteration"] for h in evals] == [0, 2, 4]
    assert evals == [h for h in multi[1]["datm"].history if "eval" in h]
    assert all(len(h["eval_ema"]["accuracies"]) == 3 for h in evals)
    assert 0 < losses[-1]["gated"] < 4  # the gate skipped some updates (losses ~0.96, 0.89, 0.97, 0.88), not all
