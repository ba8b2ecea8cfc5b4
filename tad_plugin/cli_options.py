"""The options ``tad``'s run commands share (``tad buffer | distill | eval | run | demo | audit``); its help format."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["HelpFormatter", "add_settings_options"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``tad``'s help: descriptions keep their line breaks; an option shows its default unless it has none
    (None, False) or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return text
        return super()._get_help_string(action)


def add_settings_options(p: argparse.ArgumentParser, base: dict[str, Any] | None = None) -> None:
    """Add the run settings' flags to ``p``; their help states the defaults of MTT's run config under ``base``."""
    from .engine.config import RunConfig
    from .runs import config_from_args

    d = config_from_args(argparse.Namespace(), base)
    data = d.data
    g = p.add_argument_group("settings")
    g.add_argument("--config", metavar="FILE.yaml", help="YAML config (sections data, model, buffer, tad, "
                   "distill, eval); flags below override it")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set buffer.lr=0.02 (repeatable; wins over all)")
    from .runs import methods

    g.add_argument("--method", choices=methods(), help=f"the distiller (default {RunConfig().method}; its upstream "
                   "defaults underlie everything else)")
    g.add_argument("--dataset", help="digits, cifar10, cifar100, tinyimagenet, an ImageFolder directory or a .npz "
                   f"file (default {data.dataset})")
    g.add_argument("--data-root", help="where named datasets live: torchvision's CIFAR files, tinyimagenet.npz or "
                   "tiny-imagenet-200/ (default $TAD_PLUGIN_DATA, else ~/.cache/tad_plugin/data)")
    g.add_argument("--download", action="store_const", const=True, help="let torchvision download CIFAR")
    g.add_argument("--noise", choices=["symmetric", "asymmetric-cifar10", "asymmetric-cifar100"],
                   help="synthetic label noise (default: none, the labels as loaded)")
    g.add_argument("--noise-rate", type=float, metavar="R", help="fraction of flipped labels, e.g. 0.4 "
                   f"(default {data.noise_rate:g})")
    g.add_argument("--noise-seed", type=int, help=f"seed of the synthetic noise (default {data.noise_seed})")
    g.add_argument("--cifar-n", metavar="PATH", help="CIFAR-10N/100N label file (real-world noise)")
    g.add_argument("--label-set", help="CIFAR-N label column, e.g. worse_label, aggre_label, noisy_label "
                   f"(default {data.label_set})")
    g.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                   help="ZCA whitening (default: the method's for the dataset; upstream's is on for CIFAR)")
    g.add_argument("--tad", action=argparse.BooleanOptionalAction, default=None,
                   help="Trust-Aware Diversion on (default) or off (the noisy baseline)")
    g.add_argument("--device", help=f"cuda, cuda:1, cpu (default: {d.device or 'cuda if available'})")
    g.add_argument("--out", metavar="DIR", help=f"run directory, resumed if it exists (default {d.out})")
    g.add_argument("--seed", type=int, help=f"run seed: initialisations, batches, augmentation (default {d.seed})")
    g.add_argument("--ipc", type=int, help=f"images per class of the distilled set (default {d.distill.ipc})")
    g.add_argument("--num-experts", type=int, help=f"experts to train (default {d.buffer.num_experts})")
    g.add_argument("--epochs", type=int, help=f"epochs per expert (default {d.buffer.epochs})")
    g.add_argument("--iterations", type=int, help=f"distillation iterations (default {d.distill.iterations})")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
