#!/usr/bin/env python3
"""Several GPUs: expert-training throughput and distillation speed / per-GPU memory on 1, 2, ... N processes.

Launch with torchrun; every row runs on the first W processes (a ``torch.distributed`` subgroup) while
the others wait, for W = 1, 2, 4, ... up to ``--nproc_per_node``, so one launch measures 1 vs 2 (vs N)
GPUs of the same machine. Data are generated, CIFAR-100-shaped (uint8 3x32x32, 100 classes; speed does
not depend on the pixels):

* experts: ``--groups-per-gpu * N`` groups of ``--experts-per-group`` experts (MTT buffer settings:
  ConvNet-128, SGD lr 0.01, batch 256, DSA; TAD off), ``--epochs`` epochs over ``--num-train`` images, plus
  the per-epoch test pass over ``--num-test``. The same experts are trained in every row, so
  throughput (expert-epochs per second) and speed-up compare like with like. Each process first trains a
  small warm-up group (cuDNN autotuning).
* distillation: IPC ``--ipc`` x ``--classes`` synthetic images (CIFAR-100 IPC 50 = 5,000), MTT's
  CIFAR-100 IPC 50 row (``syn_steps`` 80, ``batch_syn`` 125, lr_img 1000, lr_lr 1e-5, lr_teacher 0.01,
  DSA) over generated expert trajectories; the first iteration is a warm-up, the others are timed.
  Each row reports seconds per iteration, speed-up and every GPU's peak memory, and how far its images
  are from the one-GPU images after the same iterations (float rounding, amplified by lr_img).

Rank 0 prints the table and writes the JSON record after every row (so an interrupted run keeps what
it measured). A row that runs out of GPU memory on one process is recorded as "OOM".

usage (2 GPUs, ~2 min on H100):
    torchrun --nproc_per_node 2 benchmarks/benchmark_distributed.py --out benchmarks/results/benchmark_distributed.json
CPU smoke test (gloo):
    torchrun --nproc_per_node 2 benchmarks/benchmark_distributed.py --device cpu --num-train 512 --num-test 128 \\
        --experts-per-group 2 --epochs 1 --width 8 --ipc 2 --classes 10 --syn-steps 3 --batch-syn 8 --iterations 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from tad_plugin.data import ImageDataset
from tad_plugin.engine.config import BufferConfig, TADConfig
from tad_plugin.engine.convnet import ConvNetConfig, init_params
from tad_plugin.engine.distributed import Ranks, init_from_env, rank_device
from tad_plugin.engine.experts import ExpertTrainer
from tad_plugin.engine.matching import MatchingConfig, TrajectoryMatcher, class_labels
from tad_plugin.engine.phases import synchronize as sync
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.runlog import device_name, provenance
from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.files import atomic_write_json


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def generated(n: int, num_test: int, classes: int) -> ImageDataset:
    """CIFAR-100-shaped random images and labels (named cifar100: CIFAR's mean/std normalisation)."""
    g = torch.Generator().manual_seed(0)

    def images(m: int) -> torch.Tensor:
        return torch.randint(0, 256, (m, 3, 32, 32), generator=g, dtype=torch.uint8)

    return ImageDataset("cifar100", images(n), torch.arange(n) % classes, images(num_test),
                        torch.arange(num_test) % classes, class_names=tuple(map(str, range(classes))))


def network(args: argparse.Namespace) -> ConvNetConfig:
    return ConvNetConfig(3, args.classes, (32, 32), width=args.width, depth=3)


def train_experts(args: argparse.Namespace, ranks: Ranks, device: torch.device, num_experts: int,
                  ds: ImageDataset) -> float:
    """Train ``num_experts`` experts over ``ranks`` into a scratch store; returns the wall time."""
    net, n = network(args), len(ds.train_labels)
    pre = Preprocessor.for_dataset(ds, device=device)
    buf = BufferConfig(num_experts=num_experts, epochs=args.epochs, experts_per_group=args.experts_per_group,
                       lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=256, dsa=True)
    trainer = ExpertTrainer(net, pre, buf, TADConfig(enabled=False), device=device, progress=False, ranks=ranks)
    root = ranks.broadcast(tempfile.mkdtemp(prefix="bench_dist_") if ranks.is_main else None)
    try:
        store = TrajectoryStore.create(root, param_shapes=net.param_shapes, epochs=args.epochs, num_train=n,
                                       num_classes=args.classes)
        sync(device)
        ranks.barrier()
        start = time.perf_counter()
        # train() ends with a barrier, so this is the slowest rank's time
        trainer.train(store, ds.train_images, ds.train_labels, ds.test_images, ds.test_labels, seed=0)
        sync(device)
        return time.perf_counter() - start
    finally:
        ranks.barrier()
        if ranks.is_main:
            shutil.rmtree(root, ignore_errors=True)


def distill(args: argparse.Namespace, ranks: Ranks, device: torch.device, batch_syn: int
            ) -> tuple[float, torch.Tensor]:
    """``--iterations`` distillation iterations over ``ranks``; returns (seconds per timed iteration, images)."""
    net = network(args)
    g = torch.Generator().manual_seed(0)
    start = init_params(net, 1, g)[0]
    drift = 0.01 * torch.randn(net.num_params, generator=g)
    trajectories = [torch.stack([start + (t + 0.1 * e) * drift for t in range(args.max_start_epoch + 3)])
                    for e in range(4)]  # expert-like: a parameter drift per epoch
    images = torch.randn(args.ipc * args.classes, 3, 32, 32, generator=g)
    cfg = MatchingConfig(iterations=args.iterations, syn_steps=args.syn_steps, expert_epochs=2,
                         max_start_epoch=args.max_start_epoch, batch_syn=batch_syn, lr_img=1000.0, lr_lr=1e-5,
                         lr_teacher=0.01, eval_every=0, checkpoint_every=0, log_every=args.iterations, seed=0)
    matcher = TrajectoryMatcher(net, cfg, trajectories, images, class_labels(args.classes, args.ipc),
                                device=device, progress=False, ranks=ranks)
    times = []
    for _ in range(args.iterations):
        sync(device)
        t0 = time.perf_counter()
        matcher.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    timed = times[1:] or times
    return sum(timed) / len(timed), matcher.images.detach().cpu()


def sizes(world: int) -> list[int]:
    """1, 2, 4, ... and world itself."""
    out = [1]
    while out[-1] * 2 < world:
        out.append(out[-1] * 2)
    return out + ([world] if world > 1 else [])


def run_row(fn: Any, everyone: Ranks, members: Ranks | None) -> dict[str, Any]:
    """Run ``fn(members)`` on the member processes (the others wait); gather each process's outcome."""
    outcome: dict[str, Any] = {}
    if members is not None:
        try:
            outcome = fn(members)
        except torch.cuda.OutOfMemoryError:
            outcome = {"error": "OOM"}
    parts = everyone.gather(outcome)
    return {"ranks": [p for p in parts if p]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--width", type=int, default=128, help="ConvNet width (depth 3)")
    p.add_argument("--num-train", type=int, default=50_000)
    p.add_argument("--num-test", type=int, default=10_000)
    p.add_argument("--experts-per-group", type=int, default=10)
    p.add_argument("--groups-per-gpu", type=int, default=1, help="groups = this x the number of processes")
    p.add_argument("--epochs", type=int, default=2, help="epochs per expert")
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--syn-steps", type=int, default=80)
    p.add_argument("--max-start-epoch", type=int, default=40)
    p.add_argument("--batch-syn", default="125", help="comma-separated batch_syn values, one row set each")
    p.add_argument("--iterations", type=int, default=6, help="distillation iterations (the first is a warm-up)")
    p.add_argument("--skip-experts", action="store_true")
    p.add_argument("--skip-distill", action="store_true")
    p.add_argument("--out", help="JSON record (rank 0 writes it)")
    args = p.parse_args()

    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.device == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)  # a short timeout: a process lost to OOM ends the run instead of hanging
        dist.init_process_group("nccl", device_id=torch.device("cuda", local), timeout=datetime.timedelta(minutes=5))
    everyone = init_from_env(args.device)
    device = rank_device(args.device, everyone)
    torch.backends.cudnn.benchmark = True
    world, t_start = everyone.world_size, time.perf_counter()
    groups = {w: dist.new_group(list(range(w))) if w > 1 else None for w in sizes(world)}  # all ranks, same order

    def members(w: int) -> Ranks | None:
        if everyone.rank >= w:
            return None
        return Ranks(everyone.rank, w, everyone.local_rank, groups[w]) if w > 1 else Ranks()

    rows: list[dict[str, Any]] = []
    record = {**provenance(device, 0, command=["torchrun", "--nproc_per_node", str(world), *sys.argv]),
              "processes": world,
              "settings": vars(args), "rows": rows}

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        record["wall_time_s"] = round(time.perf_counter() - t_start, 1)
        if everyone.is_main:
            print(row, flush=True)
            if args.out:
                atomic_write_json(record, args.out)

    if not args.skip_experts:
        ds = generated(args.num_train, args.num_test, args.classes)
        warm = generated(max(2 * 256, args.num_train // 20), args.num_test, args.classes)
        train_experts(args, Ranks(), device, args.experts_per_group, warm)  # every process: cuDNN autotuning
        num_experts = args.experts_per_group * args.groups_per_gpu * world
        base = None
        for w in sizes(world):
            def fn(r: Ranks) -> dict[str, Any]:
                reset_peak(device)
                return {"seconds": train_experts(args, r, device, num_experts, ds), "peak_mib": peak_mib(device)}
            row = run_row(fn, everyone, members(w))
            seconds = max((p.get("seconds", float("inf")) for p in row["ranks"]), default=float("inf"))
            thr = num_experts * args.epochs / seconds
            base = base or thr
            emit({"stage": "experts", "gpus": w, "experts": num_experts, "epochs": args.epochs,
                  "seconds": round(seconds, 2), "expert_epochs_per_s": round(thr, 3),
                  "speedup": round(thr / base, 2), "peak_mib": [p.get("peak_mib") for p in row["ranks"]],
                  "errors": [p["error"] for p in row["ranks"] if "error" in p]})

    if not args.skip_distill:
        for batch_syn in map(int, args.batch_syn.split(",")):
            reference, base, kept = None, None, {}
            for w in sizes(world):
                def fn(r: Ranks) -> dict[str, Any]:
                    reset_peak(device)
                    sec, kept["images"] = distill(args, r, device, batch_syn)  # rank 0's copy stays here
                    return {"s_per_iter": sec, "peak_mib": peak_mib(device)}
                row = run_row(fn, everyone, members(w))
                errors = [p["error"] for p in row["ranks"] if "error" in p]
                out = {"stage": "distill", "gpus": w, "ipc": args.ipc, "classes": args.classes,
                       "syn_steps": args.syn_steps, "batch_syn": batch_syn,
                       "peak_mib": [p.get("peak_mib") for p in row["ranks"]], "errors": errors}
                if not errors:
                    sec, images = row["ranks"][0]["s_per_iter"], kept.get("images")
                    if w == 1:
                        base, reference = sec, images
                    out.update(s_per_iter=round(sec, 4), speedup=round(base / sec, 2) if base else None)
                    if everyone.is_main and reference is not None:
                        out["max_abs_diff_vs_1_gpu"] = float((images - reference).abs().max())
                emit(out)

    if everyone.is_main:
        print(f"\n{world} process(es) on {device_name(device)}; CIFAR-100-shaped generated data")
        print(f"{'stage':<8} {'GPUs':>4} {'setting':<26} {'time':>12} {'speed-up':>8}  peak MiB per GPU")
        for r in rows:
            if r["stage"] == "experts":
                setting = f"{r['experts']} experts x {r['epochs']} ep"
                time_s = f"{r['expert_epochs_per_s']:.2f} ex-ep/s"
            else:
                setting = f"IPC {r['ipc']} x {r['classes']}, batch {r['batch_syn']}"
                time_s = f"{r['s_per_iter']:.3f} s/it" if "s_per_iter" in r else ",".join(r["errors"])
            print(f"{r['stage']:<8} {r['gpus']:>4} {setting:<26} {time_s:>12} {str(r.get('speedup') or '-'):>8}  "
                  f"{r['peak_mib']}")
    everyone.barrier()
    dist.destroy_process_group() if dist.is_initialized() else None
    return 0


if __name__ == "__main__":
    sys.exit(main())
