"""``tad wrap {mtt,ftd,datm,att} --repo PATH [options] -- SCRIPT [SCRIPT ARGS]``: an upstream script with TAD.

Settings, lowest precedence first: defaults (no noise, TAD on with the plugin's defaults),
``--tad-config FILE.yaml`` (sections ``data`` and ``tad``, top-level ``state``, ``seed`` and ``cifar10``), the
dedicated flags, then ``--set section.key=value``.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_subcommand", "wrap_config", "wrap_command"]


def add_subcommand(subparsers: Any) -> None:
    """Add ``wrap`` to the ``tad`` sub-parsers; its parser's ``func`` is :func:`wrap_command`."""
    from .scripts import METHODS, SCRIPTS

    scripts = "; ".join(f"{m}: {', '.join(s)}" for m, s in SCRIPTS.items())
    p = subparsers.add_parser(
        "wrap", help="run your upstream checkout's own buffer/distill script with TAD",
        description=__doc__.split("\n\n")[0].replace("``", "") + f"\n\nKnown scripts (relative to --repo): {scripts}.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=METHODS)
    p.add_argument("--repo", required=True, metavar="PATH", help="root of your upstream checkout")
    p.add_argument("--tad-config", metavar="FILE.yaml", help="sections data (noise) and tad; keys state, seed, cifar10")
    p.add_argument("--state", metavar="FILE", help="trust state shared by buffer and distill runs; the buffer "
                   "run's trust_report.json/.png go beside it (default: a folder per checkout under "
                   "$TAD_PLUGIN_WRAP, else ~/.cache/tad_plugin/wrap)")
    p.add_argument("--cifar10", metavar="FILE.npz",
                   help="CIFAR-10 from an arrays file instead of torchvision's download: train_images uint8 "
                   "[N, 32, 32, 3] (or encoded train_jpeg + train_offsets), train_labels 0..9, the same for test_; "
                   "written as torchvision's cifar-10-batches-py folder beside the trust state (reused while the "
                   "file is unchanged) and given to the script's get_dataset as its data_path")
    p.add_argument("--noise", choices=["symmetric", "asymmetric-cifar10", "asymmetric-cifar100"])
    p.add_argument("--noise-rate", type=float, metavar="R")
    p.add_argument("--noise-seed", type=int)
    p.add_argument("--cifar-n", metavar="PATH", help="CIFAR-10N/100N label file (real-world noise)")
    p.add_argument("--label-set", help="CIFAR-N label column, e.g. worse_label")
    p.add_argument("--tad", action=argparse.BooleanOptionalAction, default=None,
                   help="TAD on (default) or off (only the noise: the noisy baseline)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set tad.warmup_epochs=5 (repeatable)")
    p.add_argument("script", metavar="SCRIPT", help="the upstream script, relative to --repo (after --)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    p.set_defaults(func=wrap_command)


_FLAGS = {"noise": "data.noise", "noise_rate": "data.noise_rate", "noise_seed": "data.noise_seed",
          "cifar_n": "data.cifar_n", "label_set": "data.label_set", "tad": "tad.enabled", "state": "state",
          "cifar10": "cifar10"}


def wrap_config(args: argparse.Namespace) -> Any:
    """The :class:`~tad_plugin.upstream.launch.WrapConfig` of parsed ``tad wrap`` arguments.

    Raises:
        ConfigError: an unknown key or a bad value (the message names it).
    """
    from ..engine.config import apply_overrides, load_yaml, merge
    from .launch import config_from_dict

    user: dict[str, Any] = load_yaml(args.tad_config) if args.tad_config else {}
    for dest, key in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            section, _, leaf = key.rpartition(".")
            user = merge(user, {section: {leaf: value}} if section else {leaf: value})
    return config_from_dict(apply_overrides(user, args.sets))


def wrap_command(args: argparse.Namespace) -> int:
    """Handler of ``tad wrap``: runs the script; returns its exit code (0 when it returned normally)."""
    from .launch import run_wrapped

    script_args = list(args.script_args)
    if script_args[:1] == ["--"]:
        script_args = script_args[1:]
    try:
        run_wrapped(args.method, args.repo, args.script, script_args, wrap_config(args))
    except SystemExit as exc:  # the script's own sys.exit / argparse error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
