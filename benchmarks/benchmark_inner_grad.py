#!/usr/bin/env python3
"""The unrolled student's gradient routes: time and peak memory of one distillation iteration.

Routes (``distill.inner_grad`` / ``distill.recompute_steps``, see tad_plugin/engine/matching.py):

* ``autograd``: ``torch.autograd.grad(..., create_graph=True)`` per inner step (upstream's route; the
  final backward is a double backward);
* ``explicit``: the ConvNet's backward written out (tad_plugin/engine/student_grad.py), first order only;
* ``compiled``: that under ``torch.compile``;
* ``+recompute``: each inner step's graph rebuilt in the final backward (torch.utils.checkpoint);
* ``+recompute-elementwise``: only its elementwise work rebuilt, its convolution and matrix-product outputs kept
  (selective checkpointing);
* modifiers after any of them, in any order: ``+cudnn-benchmark``: ``distill.cudnn_benchmark: true`` (cuDNN
  times its convolution algorithms for each shape once and keeps the fastest); ``+channels-last``: the synthetic
  images in channels-last memory (NHWC, the layout cuDNN's tensor-core kernels use). Results equal up to float
  rounding.

Each variant runs in its own process (so peak memory is its own): random images of the
``--dataset-shape``'s classes and size (speed and memory do not depend on pixel values), the ConvNet
the library builds for that size (``ConvNetConfig.for_dataset``: depth 3 for 32 px, 4 for 64 px), DSA,
trajectories of random-walk parameters. ``--syn-steps`` and ``--batch-syn`` (images per inner step)
default to the method's table row for that dataset and IPC (adapters/mtt.py, att.py, datm.py).
``--warmup`` iterations (compilation included) are not timed; the median of ``--iterations`` timed
ones is reported. When ``batch_syn`` does not divide ``classes x ipc`` the last batch of each pass is
smaller (a new shape for the compiled routes): give enough warm-up iterations to reach it. Peak memory: CUDA
``max_memory_allocated`` over the whole process, warm-up included (CUDA graphs take their memory pool
while they are captured, in the warm-up), and ``max_memory_reserved`` beside it; on the CPU the process's
peak RSS (``VmHWM``, includes torch itself).
``--method`` picks the matching variant: ``mtt`` (hard labels, fixed length), ``att`` (the closest of
the unrolled steps is matched: every step's parameters kept, ``adaptive_length``) or ``datm`` (learned
soft labels: the class logits get a gradient through the student's steps, ``lr_labels``). Prints a table
and writes a JSON record (command, settings, seed, commit, device, wall time).

usage: python benchmarks/benchmark_inner_grad.py --ipc 10 --out inner_grad.json                  # GPU
       python benchmarks/benchmark_inner_grad.py --dataset-shape tinyimagenet --ipc 50 --variants autograd
       python benchmarks/benchmark_inner_grad.py --ipc 10 --variants compiled+recompute --profile  # where it goes
       python benchmarks/benchmark_inner_grad.py --ipc 10 --variants compiled+recompute --compile-mode reduce-overhead
       python benchmarks/benchmark_inner_grad.py --ipc 10 --method att --variants compiled+recompute
       python benchmarks/benchmark_inner_grad.py --device cpu --syn-steps 10 --iterations 1 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

from tad_plugin.adapters.att import ATT_TABLE
from tad_plugin.adapters.datm import DATM_TABLE
from tad_plugin.adapters.mtt import MTT_TABLE
from tad_plugin.engine.pipeline import table_row
from tad_plugin.engine.student_grad import COMPILE_MODES

#: name -> (inner_grad, recompute_steps)
VARIANTS = {
    "autograd": ("autograd", False),
    "explicit": ("explicit", False),
    "explicit+recompute": ("explicit", True),
    "compiled": ("compiled", False),
    "compiled+recompute": ("compiled", True),
    "explicit+recompute-elementwise": ("explicit", "elementwise"),
    "compiled+recompute-elementwise": ("compiled", "elementwise"),
}
#: what a variant's name may end in: cuDNN picks its convolution algorithms by timing them; NHWC images
MODIFIERS = ("+cudnn-benchmark", "+channels-last")


def split_variant(name: str) -> tuple[str, set[str]]:
    """A variant's name -> (its route in :data:`VARIANTS`, its modifiers); ValueError names an unknown part."""
    mods = set()
    while mod := next((m for m in MODIFIERS if name.endswith(m)), None):
        mods.add(mod)
        name = name.removesuffix(mod)
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}, each optionally followed by "
                         f"{' and/or '.join(MODIFIERS)}")
    return name, mods

#: ``--dataset-shape`` -> (classes, image side in pixels) of the standard dataset; 3 channels.
DATASET_SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "tinyimagenet": (200, 64)}
#: ``--method`` -> its per-setting table (``syn_steps``, ``batch_syn`` per dataset and IPC).
METHOD_TABLES = {"mtt": MTT_TABLE, "att": ATT_TABLE, "datm": DATM_TABLE}


def convnet_config(dataset_shape: str, width: int):
    """The ConvNet the library builds for a dataset of ``dataset_shape``'s classes and size (RGB)."""
    from tad_plugin.engine.convnet import ConvNetConfig

    classes, side = DATASET_SHAPES[dataset_shape]
    return ConvNetConfig.for_dataset(SimpleNamespace(channels=3, num_classes=classes, image_size=(side, side)),
                                     width=width)


def batch_syn_arg(text: str) -> int | str:
    """``--batch-syn``: a positive count, or ``"all"`` (every image in every inner step)."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of images or 'all', got {text!r}")
    return value


def resolve_steps(args: argparse.Namespace) -> tuple[int, int | None]:
    """``(syn_steps, batch_syn)``: the options where given, else the method's table row for the dataset and
    IPC; a ``batch_syn`` of at least all images is None (all of them)."""
    row, _ = table_row(METHOD_TABLES[args.method], args.dataset_shape, args.ipc)
    syn_steps = row["syn_steps"] if args.syn_steps is None else args.syn_steps
    batch_syn = {None: row["batch_syn"], "all": None}.get(args.batch_syn, args.batch_syn)
    if batch_syn is not None and batch_syn >= DATASET_SHAPES[args.dataset_shape][0] * args.ipc:
        batch_syn = None
    return syn_steps, batch_syn


def measure(args: argparse.Namespace) -> dict:
    """One variant in this process: the timed iterations and the peak memory."""
    from tad_plugin.engine.convnet import init_params
    from tad_plugin.engine.matching import MatchingConfig, TrajectoryMatcher, class_labels

    route, mods = split_variant(args.variant)
    inner_grad, recompute = VARIANTS[route]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = convnet_config(args.dataset_shape, args.width)
    classes, (h, w) = cfg.num_classes, cfg.image_size
    g = torch.Generator(device=dev).manual_seed(0)
    base = init_params(cfg, 2, generator=g)
    trajs = [torch.stack([b + 0.01 * k * torch.randn(b.shape, device=dev, generator=g) for k in range(5)])
             for b in base]
    images = torch.randn(classes * args.ipc, 3, h, w, device=dev, generator=g)
    if "+channels-last" in mods:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = class_labels(classes, args.ipc).to(dev)
    if args.method == "datm":  # soft label logits, as DATM initialises them from expert logits
        labels = torch.nn.functional.one_hot(labels, classes).float() * 3 + 0.1 * torch.randn(
            labels.shape[0], classes, device=dev, generator=g)
    mc = MatchingConfig(iterations=args.warmup + args.iterations + int(args.profile), syn_steps=args.syn_steps,
                        batch_syn=args.batch_syn, expert_epochs=2,
                        max_start_epoch=2, lr_img=100.0, lr_lr=1e-5, lr_teacher=0.01, eval_every=0,
                        inner_grad=inner_grad, recompute_steps=recompute,
                        compile_mode=args.compile_mode if inner_grad == "compiled" else "default",
                        cudnn_benchmark="+cudnn-benchmark" in mods,
                        adaptive_length=args.method == "att", lr_labels=2.0 if args.method == "datm" else None)
    matcher = TrajectoryMatcher(cfg, mc, trajs, images, labels, progress=False)
    times = []
    for i in range(args.warmup + args.iterations):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = matcher.step()
        float(loss)  # waits for the iteration
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        reserved = torch.cuda.max_memory_reserved() / 2 ** 30
    else:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2 ** 20
        reserved = None
    row = {"variant": args.variant, "inner_grad": inner_grad, "recompute_steps": recompute,
           "cudnn_benchmark": mc.cudnn_benchmark,
           "channels_last": matcher.images.is_contiguous(memory_format=torch.channels_last),
           "iter_s": statistics.median(times), "iter_s_all": times, "peak_gib": peak, "peak_reserved_gib": reserved,
           "images_checksum": float(matcher.images.detach().double().sum()),
           "labels_checksum": float(matcher.labels.detach().double().sum())}
    if args.profile:
        row["profile"] = profile_iteration(matcher, dev)
    return row


def profile_iteration(matcher, dev: torch.device, top: int = 12) -> dict:
    """One more iteration under torch.profiler: its wall time, the time its device kernels (CPU: its
    operators' self time) add up to, their count, and the ``top`` names by total time. A GPU whose
    kernels fill much less than the wall time waits on the host (launches, syncs)."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t = time.perf_counter()
        float(matcher.step())
        wall = time.perf_counter() - t
    if cuda:
        events = [(e.name, e.time_range.elapsed_us(), 1) for e in prof.events()
                  if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        events = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, us, calls in events:
        totals[name][0] += us
        totals[name][1] += calls
    busy = sum(us for us, _ in totals.values()) / 1e6
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return {"wall_s": wall, "busy_s": busy, "busy_of": "device kernels" if cuda else "operators' self CPU time",
            "calls": int(sum(c for _, c in totals.values())),
            "top": [{"name": name[:90], "ms": us / 1e3, "calls": int(c)} for name, (us, c) in ranked]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset-shape", default="cifar10", choices=tuple(DATASET_SHAPES),
                   help="classes, image size and ConvNet depth of this dataset (random pixels)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--syn-steps", type=int, help="unrolled student steps (default: the method's table row)")
    p.add_argument("--batch-syn", type=batch_syn_arg,
                   help="images per inner step, or 'all' (default: the method's table row)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--iterations", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (compilation)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS)
                   + f", each optionally followed by {' and/or '.join(MODIFIERS)}")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile's mode for the compiled variants (reduce-overhead: CUDA graphs)")
    p.add_argument("--method", default="mtt", choices=("mtt", "att", "datm"),
                   help="the matching variant: MTT, ATT's closest step, DATM's learned soft labels")
    p.add_argument("--profile", action="store_true",
                   help="profile one more iteration per variant: kernel time vs wall time, top kernels")
    p.add_argument("--out", help="JSON record")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = p.parse_args()
    if args.ipc < 1 or (args.syn_steps is not None and args.syn_steps < 1):
        p.error("--ipc and --syn-steps must be >= 1")
    args.syn_steps, args.batch_syn = resolve_steps(args)
    if args.variant:
        print(json.dumps(measure(args)))
        return 0
    from tad_plugin.engine.runlog import device_name, provenance
    from tad_plugin.files import atomic_write_json

    t0 = time.perf_counter()
    rows = []
    for name in args.variants.split(","):
        try:
            split_variant(name)
        except ValueError as e:
            p.error(str(e))
        cmd = [sys.executable, __file__, "--variant", name, "--device", args.device, "--ipc", str(args.ipc),
               "--dataset-shape", args.dataset_shape, "--syn-steps", str(args.syn_steps),
               "--batch-syn", "all" if args.batch_syn is None else str(args.batch_syn),
               "--width", str(args.width), "--iterations", str(args.iterations),
               "--warmup", str(args.warmup), "--compile-mode", args.compile_mode, "--method", args.method] + (
            ["--profile"] if args.profile else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"variant": name, "error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "?"})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    dev = torch.device(args.device)
    mem = "peak allocated (GiB)" if dev.type == "cuda" else "peak RSS (GiB)"
    res = "reserved (GiB)" if dev.type == "cuda" else ""
    cfg = convnet_config(args.dataset_shape, args.width)
    n = cfg.num_classes * args.ipc
    print(f"\none {args.method.upper()} distillation iteration, {args.dataset_shape} shape ({cfg.num_classes} classes, "
          f"{cfg.image_size[0]} x {cfg.image_size[1]}): IPC {args.ipc} ({n} images, "
          f"{n if args.batch_syn is None else args.batch_syn} per inner step), {args.syn_steps} unrolled steps, "
          f"ConvNet-{args.width} D{cfg.depth}; {device_name(dev)}")
    wide = max(len("variant"), *(len(r["variant"]) for r in rows))
    print(f"{'variant':<{wide}} {'s / iteration':>14} {mem:>22} {res:>15} {'images / labels checksum':>30}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<{wide}} {r['error']}")
        else:
            reserved = "" if r["peak_reserved_gib"] is None else f"{r['peak_reserved_gib']:.2f}"
            sums = f"{r['images_checksum']:.4f} / {r['labels_checksum']:.4f}"
            print(f"{r['variant']:<{wide}} {r['iter_s']:>14.3f} {r['peak_gib']:>22.2f} {reserved:>15} {sums:>30}")
    for r in rows:
        if "profile" in r:
            pr = r["profile"]
            print(f"\n{r['variant']}, one profiled iteration: {1e3 * pr['wall_s']:.1f} ms wall, {pr['busy_of']} "
                  f"{1e3 * pr['busy_s']:.1f} ms ({100 * pr['busy_s'] / pr['wall_s']:.0f}%), {pr['calls']} calls")
            for k in pr["top"]:
                print(f"  {k['ms']:>8.2f} ms {k['calls']:>6}x  {k['name']}")
    record = {**provenance(dev, 0), "settings": {**{k: getattr(args, k) for k in (
                  "dataset_shape", "ipc", "syn_steps", "batch_syn", "width", "iterations", "warmup", "profile",
                  "compile_mode", "method")}, "num_classes": cfg.num_classes, "image_size": list(cfg.image_size),
                  "depth": cfg.depth},
              "wall_time_s": round(time.perf_counter() - t0, 1), "rows": rows}
    if args.out:
        atomic_write_json(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
