"""``tad features train`` and ``tad features embed``.

The ``tad`` console script calls :func:`add_subcommands`; ``python -m tad_plugin.features.cli features ...``
runs the same commands on their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subcommands", "main", "train_command", "embed_command", "kept_state_text"]


def add_subcommands(subparsers: Any) -> None:
    """Add the ``features`` command (with ``train`` and ``embed``) to an argparse sub-parser collection.
    Each leaf parser sets ``func`` to its handler, which takes the parsed ``args`` and returns an exit code."""
    from ..cli_options import HelpFormatter
    from .augment import AugmentConfig
    from .train import DEFAULT_LR, OPTIMIZERS

    features = subparsers.add_parser("features", help="train or apply the self-supervised feature extractor")
    sub = features.add_subparsers(dest="features_command", required=True)

    train = sub.add_parser("train", help="train a SimCLR ResNet-18 on a dataset's training images (labels unused)",
                           formatter_class=HelpFormatter)
    _dataset_args(train)
    train.add_argument("--out", type=Path, default=None,
                       help="extractor file (default: ~/.cache/tad_plugin/features/<dataset>.pt, or "
                            "$TAD_PLUGIN_FEATURES/<dataset>.pt); the training state goes beside it as "
                            "<stem>.state.pt and the record as <stem>.json")
    train.add_argument("--json", type=Path, default=None, help="where to write the training record (JSON)")
    train.add_argument("--epochs", type=int, default=200, help="most epochs (the cosine schedule spans them)")
    train.add_argument("--time-budget", type=float, default=None,
                       help="seconds of training; the cosine schedule is fitted to end when they run out")
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                       help="sgd: SGD with momentum; lars: layer-wise trust ratio on conv/linear weights, biases "
                            "and BatchNorm excluded (and without weight decay); pair it with --weight-decay 1e-6")
    train.add_argument("--lr", type=float, default=None,
                       help="peak learning rate (None: " + ", ".join(
                           f"{name} {lr} * batch / 256" for name, lr in DEFAULT_LR.items()) + ")")
    train.add_argument("--temperature", type=float, default=0.5)
    train.add_argument("--hidden-dim", type=int, default=2048, help="projection head's hidden width")
    train.add_argument("--proj-dim", type=int, default=128, help="projection head's output width (NT-Xent space)")
    train.add_argument("--weight-decay", type=float, default=5e-4,
                       help="weight decay (LARS recipes use 1e-6..1e-5)")
    train.add_argument("--lars-eta", type=float, default=1e-3, help="LARS trust coefficient (unused by sgd)")
    train.add_argument("--warmup-epochs", type=int, default=10)
    train.add_argument("--crop-min-scale", type=float, default=AugmentConfig().crop_scale[0],
                       help="RandomResizedCrop's smallest area share")
    train.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                       help="train on the images resized to PIXELS x PIXELS (the extractor resizes what it embeds "
                            "the same way): more epochs in a --time-budget for large images, e.g. 32 for Tiny "
                            "ImageNet's 64 x 64 (default: the dataset's own size)")
    train.add_argument("--eval-every", type=int, default=5, help="kNN evaluation every N epochs (0: at the end)")
    train.add_argument("--checkpoint-every", type=int, default=10, help="save the resumable state every N epochs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the model (default: on for CUDA)")
    train.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast on CUDA")
    train.add_argument("--resume", action="store_true", help="continue from <stem>.state.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=train_command)

    embed = sub.add_parser("embed", help="write the features of a dataset's images",
                           formatter_class=HelpFormatter)
    _dataset_args(embed)
    embed.add_argument("--checkpoint", type=Path, default=None,
                       help="extractor file (default: the cached one for --dataset)")
    embed.add_argument("--split", choices=("train", "test", "all"), default="all")
    embed.add_argument("--out", type=Path, required=True,
                       help="output torch file: {split}_features float32 [N, 512], {split}_labels int64 [N]")
    embed.add_argument("--batch-size", type=int, default=1024)
    embed.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    embed.set_defaults(func=embed_command)


def kept_state_text(out: Path) -> str:
    """What an interrupted ``features train`` into the extractor file ``out`` kept, and how to continue it."""
    from .train import saved_progress, state_path_for

    saved = saved_progress(state_path_for(out))
    if saved is None:
        return "it had saved no training state yet; run the command again to start it"
    return (f"kept {state_path_for(out)} (after epoch {saved[0]} of {saved[1]}); the same command with --resume "
            f"continues from it (the epoch in progress starts over)")


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="digits, cifar10, cifar100, tinyimagenet, an ImageFolder directory or a .npz arrays file")
    parser.add_argument("--data-root", "--root", dest="root", default=None,
                        help="where named datasets live, as for tad run (default $TAD_PLUGIN_DATA, else "
                             "~/.cache/tad_plugin/data)")
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR")


def _device(name: str | None) -> str:
    """``--device`` checked (a device torch knows and this machine has); None = CUDA when available, else the CPU."""
    from ..engine.distributed import resolve_device

    return str(resolve_device(name))


def train_command(args: argparse.Namespace) -> int:
    """Handler of ``features train``: trains, writes the extractor, its state and a JSON record."""
    import dataclasses

    import torch

    from ..data import check_images_vary, load_dataset
    from ..files import atomic_write_json, output_file
    from .augment import AugmentConfig
    from .extractor import default_extractor_path
    from .train import TrainConfig, train_simclr

    out = output_file(args.out or default_extractor_path(args.dataset), "--out")
    json_path = output_file(args.json or out.with_suffix(".json"), "--json")
    device = _device(args.device)
    dataset = load_dataset(args.dataset, root=args.root, download=args.download)
    check_images_vary(dataset)
    config = TrainConfig(
        epochs=args.epochs, time_budget=args.time_budget, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, temperature=args.temperature, weight_decay=args.weight_decay, lars_eta=args.lars_eta,
        warmup_epochs=args.warmup_epochs, hidden_dim=args.hidden_dim, out_dim=args.proj_dim,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed, amp=args.amp,
        compile=(device.startswith("cuda") if args.compile is None else args.compile),
        augment=dataclasses.replace(AugmentConfig(), crop_scale=(args.crop_min_scale, 1.0)),
        image_size=args.image_size,
    )
    args.kept = lambda: kept_state_text(out)  # what a Ctrl-C says (tad_plugin.cli.main)
    result = train_simclr(dataset, config, device, checkpoint=out, resume=args.resume,
                          progress=not args.no_progress)
    record = {
        "dataset": dataset.name, "checkpoint": str(out), "epochs": result.epochs, "seconds": result.seconds,
        "knn": {str(k): v for k, v in result.knn.items()}, "config": config.to_dict(), "history": result.history,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": str(torch.__version__), "command": " ".join(sys.argv),
    }
    atomic_write_json(record, json_path)
    print(f"wrote {out} and {json_path}: " + ", ".join(f"kNN@{k} {100 * v:.2f}%" for k, v in result.knn.items())
          + f" after {result.epochs} epochs, {result.seconds:.0f} s")
    return 0


def embed_command(args: argparse.Namespace) -> int:
    """Handler of ``features embed``: writes ``{split}_features`` / ``{split}_labels`` tensors."""
    from ..data import load_dataset
    from ..files import atomic_torch_save
    from .extractor import default_extractor_path, load_extractor

    device = _device(args.device)
    extractor = load_extractor(args.checkpoint or default_extractor_path(args.dataset), device=device,
                               batch_size=args.batch_size)
    dataset = load_dataset(args.dataset, root=args.root, download=args.download)
    splits = ("train", "test") if args.split == "all" else (args.split,)
    out: dict[str, Any] = {}
    for split in splits:
        out[f"{split}_features"] = extractor.embed(getattr(dataset, f"{split}_images").to(device),
                                                      progress=f"embed {split}").cpu()
        out[f"{split}_labels"] = getattr(dataset, f"{split}_labels")
    atomic_torch_save(out, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m tad_plugin.features.cli features {train,embed} ...``."""
    parser = argparse.ArgumentParser(prog="python -m tad_plugin.features.cli")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
