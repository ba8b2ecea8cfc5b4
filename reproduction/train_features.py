"""Reproduce the self-supervised feature extractor's results in one command (needs a CUDA GPU).

    python reproduction/train_features.py --dataset /root/cifar10.npz --time-budget 540 --bench

1. ``--bench``: times SimCLR steps for a few (batch size, torch.compile) settings and prints a table of
   throughput (augmented views per second) and the share of device time spent in augmentation.
2. Trains a SimCLR ResNet-18 for ``--time-budget`` seconds (cosine schedule fitted to the budget), with a
   cosine kNN evaluation (k = 10, 200) every ``--eval-every`` epochs.
3. Writes ``<results>/features_<dataset>.json`` (curve, final accuracy, throughput, config, seed, commit,
   GPU, wall time), ``features_<dataset>.png`` (kNN accuracy vs epochs and minutes) and
   ``features_<dataset>.md`` (a summary table). The extractor checkpoint goes to ``--checkpoint``.

Probes give each run its own ``--name``/``--results``/``--checkpoint`` so that the 10-minute result files
stay untouched, e.g. the SGD-vs-LARS probe (2 minutes each) and the peak-lr probe recorded under
``results/features_probe/``::

    python reproduction/train_features.py --dataset /root/cifar10.npz --name cifar10_lars_120s --time-budget 120 \\
        --eval-every 10 --optimizer lars --weight-decay 1e-6 --temperature 0.2 --results /root/probe \\
        --checkpoint /root/probe/lars.pt
    python reproduction/train_features.py --dataset /root/cifar10.npz --name cifar10_lr024 --lr 0.24 \\
        --time-budget 590 --eval-every 20 --results /root/probe --checkpoint /root/probe/lr024.pt

``--compare`` draws several runs' records on one plot (no GPU; tad_plugin.features.plots), e.g. the 10-minute
runs::

    python reproduction/train_features.py --compare results/features_cifar10.json \\
        results/features_probe/features_cifar10_{lr006,lr024,compiled_aug,fixes,fused,t02,crop008}.json \\
        --compare-out results/features_probe/ten_minute_runs.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from tad_plugin.data import load_dataset
from tad_plugin.engine.runlog import git_commit
from tad_plugin.features.augment import AugmentConfig
from tad_plugin.features.plots import compare_runs, plot_history
from tad_plugin.features.train import DEFAULT_LR, OPTIMIZERS, TrainConfig, measure_throughput, train_simclr
from tad_plugin.files import atomic_write, atomic_write_json

ROOT = Path(__file__).resolve().parent.parent



def bench(images: torch.Tensor, base: TrainConfig, device: str, steps: int) -> list[dict[str, float]]:
    rows = []
    settings = ((512, False), (512, True), (1024, True)) if device.startswith("cuda") else ((base.batch_size, False),)
    for batch_size, compiled in settings:
        cfg = dataclasses.replace(base, batch_size=batch_size, compile=compiled)
        rows.append(measure_throughput(images, cfg, device, steps=steps))
        torch._dynamo.reset()
    print(f"\n{'batch':>6} {'compile':>8} {'views/s':>10} {'step ms':>8} {'aug share':>10} {'aug-only views/s':>17} "
          f"{'warm-up s':>9}")
    for r in rows:
        print(f"{r['batch_size']:>6} {str(r['compile']):>8} {r['images_per_s']:>10.0f} {r['step_ms']:>8.1f} "
              f"{100 * r['augment_share']:>9.1f}% {r['augment_images_per_s']:>17.0f} {r['warmup_s']:>9.1f}")
    return rows


def _recipe(config: dict) -> str:
    eta = f" (eta {config['lars_eta']:g})" if config["optimizer"] == "lars" else ""
    return (f"{config['optimizer'].upper()}{eta}, peak lr {config['base_lr']:g}, weight decay "
            f"{config['weight_decay']:g}, temperature {config['temperature']:g}, batch {config['batch_size']}")


def markdown(record: dict, path: Path) -> None:
    final = record["knn"]
    lines = [
        f"# SimCLR ResNet-18 features on {record['dataset']}",
        "",
        f"{record['note']}",
        "",
        f"- device: {record['device']}; torch {record['torch']}; commit `{record['commit']}`; seed {record['seed']}",
        f"- command: `{record['command']}`",
        f"- recipe: {_recipe(record['config'])}",
        f"- trained {record['epochs']} epochs in {record['train_seconds'] / 60:.1f} min "
        f"(wall time of the script {record['wall_seconds'] / 60:.1f} min); "
        f"checkpoint {record['checkpoint_mib']:.1f} MiB",
        "- final kNN top-1: " + ", ".join(f"k={k}: {100 * v:.2f}%" for k, v in final.items())
        + "".join(f"; similarity-weighted k={key[3:-9]} (T = 0.1, the published kNN monitors' vote): "
                  f"{100 * v:.2f}%" for key, v in record["history"][-1].items() if key.endswith("_weighted")),
        "",
        "| epoch | minutes | loss | kNN k=10 (%) | kNN k=200 (%) | views/s | augment share |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for h in record["history"]:
        if "knn10" in h:
            lines.append(f"| {h['epoch']} | {h['seconds'] / 60:.2f} | {h['loss']:.3f} | {100 * h['knn10']:.2f} | "
                         f"{100 * h.get('knn200', float('nan')):.2f} | {h['images_per_s']:.0f} | "
                         f"{100 * h['augment_share']:.1f}% |")
    if record.get("throughput"):
        steps = record.get("bench_steps", "?")
        lines += ["", f"Throughput (separate timing, fresh model, {steps} steps after 5 warm-up steps):", "",
                  "| batch | compile | views/s | step ms | augment share | augmentation alone, views/s | warm-up s |",
                  "| ---: | :---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in record["throughput"]:
            lines.append(f"| {r['batch_size']} | {r['compile']} | {r['images_per_s']:.0f} | {r['step_ms']:.1f} | "
                         f"{100 * r['augment_share']:.1f}% | {r['augment_images_per_s']:.0f} | {r['warmup_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="dataset source for load_dataset (e.g. /root/cifar10.npz); required unless "
                                     "--compare")
    p.add_argument("--compare", type=Path, nargs="+", metavar="RECORD.json",
                   help="no training: plot these runs' kNN curves together into --compare-out (no GPU needed)")
    p.add_argument("--compare-out", type=Path, default=Path("features_runs.png"))
    p.add_argument("--name", default="cifar10", help="name used in the result file names")
    p.add_argument("--time-budget", type=float, default=540.0, help="training seconds")
    p.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd, or lars (see tad_plugin.features.lars)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (None: " + ", ".join(
        f"{name} {lr} * batch / 256" for name, lr in DEFAULT_LR.items()) + ")")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="LARS recipes use 1e-6..1e-5")
    p.add_argument("--lars-eta", type=float, default=1e-3, help="LARS trust coefficient")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--hidden-dim", type=int, default=2048, help="projection head's hidden width")
    p.add_argument("--proj-dim", type=int, default=128, help="projection head's output width (NT-Xent space)")
    p.add_argument("--warmup-epochs", type=int, default=10)
    p.add_argument("--crop-min-scale", type=float, default=AugmentConfig().crop_scale[0],
                   help="RandomResizedCrop's smallest crop area, as a fraction of the image (torchvision's "
                        "default is 0.08)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--bench", action="store_true", help="print the throughput table first")
    p.add_argument("--bench-only", action="store_true", help="only the throughput table (and its JSON)")
    p.add_argument("--bench-steps", type=int, default=30)
    p.add_argument("--checkpoint-every", type=int, default=25, help="epochs between resumable states")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD here)")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--checkpoint", type=Path, default=Path("/tmp/tad_features/cifar10.pt"))
    p.add_argument("--note", default="Pixels: the CIFAR-10 JPEG copy (quality 75), not the official pixels, so "
                                     "absolute accuracies differ a little from published ones.")
    args = p.parse_args()
    if args.compare:
        try:
            compare_runs(args.compare, args.compare_out)
        except ValueError as exc:
            sys.exit(str(exc))
        print(f"wrote {args.compare_out}")
        return 0
    if args.dataset is None:
        p.error("--dataset is required (unless --compare)")
    t_start = time.perf_counter()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("this reproduction needs a CUDA GPU (--device cpu works for a smoke test on digits only)")
    dataset = load_dataset(args.dataset)
    config = TrainConfig(epochs=args.epochs, time_budget=args.time_budget, batch_size=args.batch_size,
                         optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, lars_eta=args.lars_eta,
                         temperature=args.temperature, warmup_epochs=args.warmup_epochs, eval_every=args.eval_every,
                         hidden_dim=args.hidden_dim, out_dim=args.proj_dim,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, compile=not args.no_compile,
                         augment=AugmentConfig(crop_scale=(args.crop_min_scale, 1.0)))
    record: dict = {"dataset": args.name, "note": args.note, "command": " ".join(["python"] + sys.argv),
                    "commit": args.commit or git_commit(ROOT) or "unknown",
                    "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                    "torch": torch.__version__,
                    "seed": args.seed}
    if args.bench or args.bench_only:
        record["throughput"] = bench(dataset.train_images, config, device, args.bench_steps)
        record["bench_steps"] = args.bench_steps
    if args.bench_only:
        record["wall_seconds"] = time.perf_counter() - t_start
        atomic_write_json(record, args.results / f"features_{args.name}_throughput.json")
        return 0
    result = train_simclr(dataset, config, device, checkpoint=args.checkpoint, progress=False)
    record.update({
        "epochs": result.epochs, "train_seconds": result.seconds, "wall_seconds": time.perf_counter() - t_start,
        "knn": {str(k): v for k, v in result.knn.items()}, "config": config.to_dict(),
        "checkpoint_mib": args.checkpoint.stat().st_size / 2**20, "history": result.history,
    })
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, args.results / f"features_{args.name}.json")
    plot_history(result.history, config.knn_ks, f"SimCLR ResNet-18, {args.name} (JPEG pixels), {record['device']}",
         args.results / f"features_{args.name}.png")
    markdown(record, args.results / f"features_{args.name}.md")
    print("final kNN: " + ", ".join(f"k={k} {100 * v:.2f}%" for k, v in result.knn.items())
          + f"; {result.epochs} epochs in {result.seconds:.0f} s; wall {record['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
