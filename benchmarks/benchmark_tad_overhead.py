#!/usr/bin/env python3
"""TAD's cost per expert epoch: the noisy expert epoch and the TAD expert epoch side by side, and where TAD's
time goes.

One run trains E experts twice at the same settings on one device (same data, seeds, buffer settings):

* **noisy arm**: plain cross-entropy on every sample (``tad.enabled=False``);
* **TAD arm**: one warm-up epoch, then before every epoch the division (per-sample loss pass +
  ``filter_dataset`` for the E experts, batched where the plugin allows) and after it the inner loop's
  ``recalibrate`` for every expert, batched where the plugin allows
  (:func:`~tad_plugin.engine.experts.recalibrate_experts`, as the dual loop calls it), with fixed features
  (random projections of the pixels to ``--feature-dim``: the search and Mahalanobis cost depends on N and D,
  not on what the features mean) and 10 anchors per class taken from the training set. The anchors'
  distillation (once per group, not per epoch) is not part of it.

An expert epoch is the wall time between the ends of two consecutive epochs of the group (training pass,
test pass, and for TAD the division and recalibration), the median over epochs 1 .. epochs-2 (epoch 0
carries compilation and autotuning; the last epoch ends with the store write). TAD's share is split into
loss pass, GMM fit, class thresholds, the rest of the division (checks, glue) and recalibration, each timed
with a device synchronisation around it. Then the batched division alone on the TAD arm's last losses
([E, N]): the GMM fit and the whole ``filter_dataset_batch``, against ``filter_dataset`` called per expert.

``--dataset``: a name or file for :func:`tad_plugin.data.load_dataset` (e.g. the decoded CIFAR-10 arrays
``/root/cifar10.npz``), or ``generated``: class-patterned random images of CIFAR-10's shape (``--n`` training
images, 32x32x3, 10 classes). Labels get 40% symmetric noise. Prints a table, writes a JSON record
(command, settings, seed, commit, device, wall time) to ``--out``.

usage: python benchmarks/benchmark_tad_overhead.py --dataset /root/cifar10.npz --zca --compile --out tad_overhead.json
       python benchmarks/benchmark_tad_overhead.py --dataset generated --device cpu --experts 2 --n 128 \\
           --width 8 --epochs 3 --top-k 5 --num-neighbors 5 --out smoke.json   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from phase_timing import phase_timers, sync  # this folder's shared timing helpers

import tad_plugin.division as division
import tad_plugin.trust_loop as trust_loop
from tad_plugin import TADHooks, get_plugin_manager
from tad_plugin.data import ImageDataset, load_dataset
from tad_plugin.engine.config import BufferConfig, TADConfig, to_dict
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.experts import EpochState, ExpertTrainer, TrustUpdate, recalibrate_experts
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.runlog import device_name, provenance
from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.files import atomic_write_json
from tad_plugin.noise import make_noisy_labels
from tad_plugin.tad import TrustAwareDiversion

#: (module or class, attribute, phase): what is timed inside the TAD arm's epochs
PHASES = (
    (trust_loop, "mean_losses", "loss pass"),
    (trust_loop.TrustLoop, "divide", "division (filter_dataset x E)"),
    (division, "_fit_posterior", "  of which GMM fit"),
    (division, "class_thresholds", "  of which class thresholds"),
)
RECAL = "recalibration (recalibrate_experts)"





def generated_dataset(n: int, n_test: int, seed: int) -> ImageDataset:
    """CIFAR-10-shaped data (uint8 [n, 3, 32, 32], 10 classes): a smooth random pattern per class plus
    pixel noise, so that experts learn and per-sample losses separate."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.nn.functional.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=32, mode="bilinear")

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (m,), generator=g)
        x = 128 + 40 * patterns[labels] + 50 * torch.randn(m, 3, 32, 32, generator=g)
        return x.clamp(0, 255).to(torch.uint8), labels

    (tx, ty), (vx, vy) = draw(n), draw(n_test)
    return ImageDataset("generated", tx, ty, vx, vy, tuple(f"class{c}" for c in range(10)))


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_arm(tad: bool, ds: ImageDataset, noisy: torch.Tensor, args: argparse.Namespace, device: torch.device,
            features: torch.Tensor, anchors: torch.Tensor, anchor_labels: torch.Tensor,
            hooks: TADHooks) -> dict[str, Any]:
    """Train ``args.experts`` experts for ``args.epochs`` epochs with or without TAD; per-epoch wall seconds
    (between the ends of consecutive epochs) and, for TAD, the phases' seconds per epoch and the last losses."""
    net = ConvNetConfig.for_dataset(ds, width=args.width)
    pre = Preprocessor.for_dataset(ds, zca=args.zca, device=device)
    buffer = BufferConfig(num_experts=args.experts, epochs=args.epochs, experts_per_group=args.experts,
                          compile=args.compile, amp=args.amp, channels_last=args.channels_last)
    stamps: list[float] = []
    per_epoch: list[dict[str, float]] = []
    seconds: dict[str, float] = defaultdict(float)
    last: dict[str, torch.Tensor] = {}

    def on_epoch(state: EpochState) -> TrustUpdate | None:
        update = None
        if tad and state.splits is not None:
            sync(device)
            t0 = time.perf_counter()
            update = recalibrate_experts(hooks, features, state, anchors, anchor_labels)
            sync(device)
            seconds[RECAL] += time.perf_counter() - t0
            last["losses"], last["labels"] = state.losses, state.labels
        sync(device)
        stamps.append(time.perf_counter())
        per_epoch.append(dict(seconds))
        seconds.clear()
        return update

    trainer = ExpertTrainer(net, pre, buffer, TADConfig(enabled=tad, warmup_epochs=1), hooks=hooks if tad else None,
                            device=device, on_epoch=on_epoch, progress=False)
    with tempfile.TemporaryDirectory() as tmp, phase_timers(PHASES, device, seconds):
        store = TrajectoryStore.create(tmp, param_shapes=net.param_shapes, epochs=args.epochs,
                                       num_train=len(noisy), num_classes=ds.num_classes)
        start = time.perf_counter()
        trainer.train(store, ds.train_images, noisy, ds.test_images, ds.test_labels, seed=args.seed)
        total = time.perf_counter() - start
        acc = store.load_expert(0).test_acc.tolist()
    steady = range(1, len(stamps))  # epochs 1 .. epochs-2 (on_epoch runs after every epoch but the last)
    epochs = [stamps[i] - stamps[i - 1] for i in steady]
    phases = {name: statistics.median(per_epoch[i].get(name, 0.0) for i in steady) for name in
              [p for _, _, p in PHASES] + [RECAL]} if tad else {}
    return {"epoch_s": statistics.median(epochs), "epochs_s": [round(t, 4) for t in epochs],
            "phases_s": phases, "total_s": total, "expert0_test_acc": [round(a, 4) for a in acc],
            "buffer": to_dict(buffer), "last": last}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="generated", help="generated, digits, cifar10, an arrays file .npz, ...")
    p.add_argument("--n", type=int, default=50_000, help="training images of --dataset generated")
    p.add_argument("--experts", type=int, default=20, help="experts in the group (E)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per arm (>= 3; epochs 1 .. epochs-2 are timed)")
    p.add_argument("--width", type=int, default=128, help="ConvNet width (upstream's 128)")
    p.add_argument("--zca", action="store_true", help="ZCA-whitened inputs (the CIFAR-10 configs' setting)")
    p.add_argument("--compile", action="store_true", help="buffer.compile (the CIFAR-10 configs' setting)")
    p.add_argument("--amp", action="store_true", help="buffer.amp: bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="buffer.channels_last")
    p.add_argument("--feature-dim", type=int, default=512, help="D of the inner loop's features")
    p.add_argument("--top-k", type=int, default=500, help="tad.top_k (the CIFAR-10 configs' value)")
    p.add_argument("--num-neighbors", type=int, default=50, help="tad.num_neighbors (the CIFAR-10 configs' value)")
    p.add_argument("--search-backend", default="auto", choices=("auto", "faiss", "torch"))
    p.add_argument("--repeat", type=int, default=5, help="repetitions of the standalone division timings")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="path of the JSON record")
    args = p.parse_args()
    if args.epochs < 3:
        p.error("--epochs must be >= 3 (epoch 0 and the last one are not timed)")
    device, start = torch.device(args.device), time.perf_counter()
    ds = generated_dataset(args.n, max(args.n // 5, 10), args.seed) if args.dataset == "generated" \
        else load_dataset(args.dataset)
    k, n = ds.num_classes, len(ds.train_labels)
    noisy = make_noisy_labels(ds.train_labels, "symmetric", 0.4, num_classes=k, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    projection = torch.randn(ds.train_images[0].numel(), args.feature_dim, generator=gen)
    features = ((ds.train_images.flatten(1).float() / 255) @ projection).to(device)
    anchor_idx = torch.cat([torch.nonzero(noisy == c).flatten()[:10] for c in range(k)])  # 10 per class
    anchors, anchor_labels = features[anchor_idx], noisy[anchor_idx].to(device)
    plugin = TrustAwareDiversion(top_k=args.top_k, num_neighbors=args.num_neighbors,
                                 search_backend=args.search_backend)
    hooks = TADHooks(get_plugin_manager(default=plugin, load_entrypoints=False))

    arms = {name: run_arm(name == "tad", ds, noisy, args, device, features, anchors, anchor_labels, hooks)
            for name in ("noisy", "tad")}
    last = arms["tad"].pop("last")
    arms["noisy"].pop("last")
    losses, labels = last["losses"], last["labels"]  # the TAD arm's last division's input, [E, N]
    x = losses.double()
    x = (x - x.amin(1, keepdim=True)) / (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))
    no_skip = torch.zeros(args.experts, dtype=torch.bool, device=device)
    alone = {
        "GMM fit, batched": timed(lambda: division._fit_posterior(x, no_skip, random_state=0, max_iter=100, tol=1e-3,
                                                                  reg_covar=5e-4), device, args.repeat),
        "filter_dataset_batch (E experts)": timed(lambda: hooks.filter_dataset_batch(losses, labels, k), device,
                                                  args.repeat),
        "filter_dataset x E (one call per expert)": timed(
            lambda: [hooks.filter_dataset(losses[e], labels[e], k) for e in range(args.experts)], device, 1),
    }

    noisy_s, tad_s = arms["noisy"]["epoch_s"], arms["tad"]["epoch_s"]
    phases = arms["tad"]["phases_s"]
    print(f"\n{device_name(device)}; {ds.name}, N={n}, E={args.experts}, zca={args.zca}, compile={args.compile}, "
          f"amp={args.amp}, channels_last={args.channels_last}, D={args.feature_dim}, top_k={args.top_k}, "
          f"num_neighbors={args.num_neighbors}")
    print(f"{'group epoch (E experts)':44s} {'seconds':>9s} {'per expert':>11s}")
    print(f"{'noisy expert epoch':44s} {noisy_s:9.3f} {noisy_s / args.experts:11.4f}")
    print(f"{'TAD expert epoch':44s} {tad_s:9.3f} {tad_s / args.experts:11.4f}")
    print(f"{'ratio TAD / noisy':44s} {tad_s / noisy_s:9.3f}")
    print("TAD's work inside its epoch (median per epoch):")
    for name, t in phases.items():
        print(f"  {name:42s} {t:9.4f}")
    print(f"division alone on the TAD arm's last losses [E={args.experts}, N={n}] (median of {args.repeat}):")
    for name, t in alone.items():
        print(f"  {name:42s} {t * 1000:9.2f} ms")
    atomic_write_json({
        **provenance(device, args.seed),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "settings": {"dataset": ds.name, "num_train": n, "experts": args.experts, "epochs": args.epochs,
                     "width": args.width,
                     "zca": args.zca, "compile": args.compile, "amp": args.amp, "channels_last": args.channels_last,
                     "feature_dim": args.feature_dim, "top_k": args.top_k, "num_neighbors": args.num_neighbors,
                     "search_backend": args.search_backend, "noise": "symmetric 0.4", "tad_warmup_epochs": 1},
        "timed": "expert epoch = wall time between the ends of consecutive epochs of the group (train + test pass, "
                 "+ loss pass, division and recalibration with TAD), median of epochs 1 .. epochs-2",
        "noisy_epoch_s": round(noisy_s, 6), "tad_epoch_s": round(tad_s, 6), "ratio": round(tad_s / noisy_s, 4),
        "tad_phases_s": {name: round(t, 5) for name, t in phases.items()},
        "division_alone_s": {name: round(t, 6) for name, t in alone.items()},
        "arms": {name: {key: value for key, value in arm.items() if key != "phases_s"} for name, arm in arms.items()},
    }, args.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
