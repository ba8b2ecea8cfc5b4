"""``tad audit``: find the wrong labels of a training set and suggest the right ones, from TAD's experts or
by confident learning (cleanlab), with :func:`audit` as its Python function. What it reads and writes is
:data:`DESCRIPTION` (``tad audit -h``); the files' columns are :class:`~tad_plugin.engine.audit.AuditTable`'s
and :func:`~tad_plugin.engine.audit.write_audit` writes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cli_options import HelpFormatter, add_settings_options
from .data import ImageDataset
from .engine.distributed import resolve_device
from .runs import (
    CPU_THREADS,
    DEMO_CONFIG,
    TrainingData,
    check_run,
    config_from_args,
    cpu_threads,
    method_adapter,
    prepare_data,
    run_folder,
    save_labels,
    settings_line,
    stage_buffer,
)

__all__ = ["DESCRIPTION", "DETECTORS", "AuditResult", "add_subcommand", "audit"]

DETECTORS = ("tad", "cleanlab")

#: ``tad audit``'s description (``tad audit -h``).
DESCRIPTION = """\
Find the wrong labels of a training set and suggest the right ones, from TAD's experts (--detector tad) or by
confident learning (--detector cleanlab). Takes tad run's data options (--dataset, --noise, --noise-rate,
--cifar-n, --label-set, --config, --set) and writes into --out:

  buffer/                    TAD's experts (resumed like tad run's buffer stage; none with --buffer DIR)
  folds/fold<k>/             --detector cleanlab: the K cross-validation ConvNets
  label_issues.csv           every training sample: given label, suggested label, is_label_issue, score, ...
  label_issues_ranked.csv    the flagged samples only, most likely wrong first (and as .json)
  labels_cleaned.npz         label set cleaned_label (the suggestions where flagged, the given labels elsewhere):
                             tad run / tad wrap --cifar-n OUT/labels_cleaned.npz --label-set cleaned_label
  audit_report.md, .png      detection metrics and per-class numbers when the clean labels are known, the
                             given-vs-suggested confusion, the trusted space per epoch
  pruned/<dataset>.npz       with --write-pruned: the dataset without the flagged samples
  result_audit.json          the record: settings, stage wall times, detection metrics

On digits without --config the demo's settings (tad demo: small ConvNet, 8 experts x 30 epochs, pixel features)
are the base, so the audit runs in minutes on a CPU."""


@dataclass
class AuditResult:
    """What :func:`audit` produced: the table (:class:`~tad_plugin.engine.audit.AuditTable`), the detection
    metrics (empty without clean labels), the written files ``{what: path}`` and the run record's path."""

    table: Any
    metrics: dict[str, Any]
    files: dict[str, str]
    record: Path


def add_subcommand(sub: Any) -> None:
    """Register ``tad audit`` on the ``tad`` parser's sub-parsers (its handler as ``func``)."""
    p = sub.add_parser("audit", help="find and fix wrong labels (TAD's experts or cleanlab)",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    add_settings_options(p)
    p.add_argument("--detector", choices=DETECTORS, default="tad",
                   help="tad: TAD's experts (the dual loop's trusted spaces and recalibrated labels); cleanlab: "
                        "confident learning on K-fold out-of-sample ConvNet probabilities (needs the cleanlab extra)")
    p.add_argument("--buffer", metavar="DIR", help="audit with the TAD experts in DIR (a run's buffer on the same "
                   "data and labels) instead of training them")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of --detector cleanlab "
                   "(default 5, cleanlab's own)")
    p.add_argument("--write-pruned", action="store_true", help="also write OUT/pruned/<dataset>.npz, the dataset "
                   "without the flagged samples (for training on the rest)")
    p.set_defaults(func=_cmd_audit)


def _base(args: argparse.Namespace) -> dict[str, Any]:
    """The settings under the user's: the demo's on digits without --config, else the method's defaults."""
    base: dict[str, Any] = {"out": "runs/audit"}
    if args.config is None and (args.dataset or "digits") == "digits":
        base.update({k: DEMO_CONFIG[k] for k in ("model", "buffer", "tad", "distill", "device")})
    return base


def _cmd_audit(args: argparse.Namespace) -> int:
    from .engine.config import ConfigError

    if args.tad is False:
        raise ConfigError("tad audit judges labels with TAD's experts or cleanlab: drop --no-tad (use "
                          "--detector cleanlab for the other method)")
    if args.detector == "cleanlab" and args.buffer:
        raise ConfigError("--buffer holds TAD's experts; --detector cleanlab trains its own fold models: drop one")
    args = argparse.Namespace(**{**vars(args), "sets": [*args.sets,
                                                        f"tad.enabled={str(args.detector == 'tad').lower()}"]})
    cfg = config_from_args(args, _base(args))
    args.started.append(Path(cfg.out))  # what a Ctrl-C reports as kept (tad_plugin.cli.kept_text)
    if resolve_device(cfg.device).type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        args.stack.enter_context(cpu_threads(CPU_THREADS))  # the CPU thread rule of every command, until it ends
    print(settings_line(cfg) + f"; detector {args.detector}", flush=True)
    res = audit(cfg, detector=args.detector, buffer=args.buffer, folds=args.folds, pruned=args.write_pruned,
                progress=not args.no_progress)
    m = res.metrics
    flagged = int(res.table.is_label_issue.sum())
    line = f"{flagged} of {len(res.table.given)} labels flagged ({args.detector})"
    if m:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.1f}%"
        line += (f"; against the clean labels: precision {pct(m['precision'])}, recall {pct(m['recall'])}, "
                 f"F1 {pct(m['f1'])}, suggested labels {pct(m['suggested_accuracy'])} right (wrong labels: "
                 f"{pct(m['noise_rate'])})")
    print(line)
    print(f"table {res.files['table']}; cleaned labels {res.files['labels']} (label set cleaned_label); report "
          f"{res.files['report']}; record {res.record}")
    return 0


def audit(cfg: Any, *, detector: str = "tad", buffer: str | Path | None = None, folds: int = 5,
          pruned: bool = False, progress: bool = True) -> AuditResult:
    """Audit the labels of ``cfg``'s training data into ``cfg.out`` (see the module docstring for the files).

    Args:
        cfg: the run config (:class:`~tad_plugin.engine.config.RunConfig`): data, labels, model, expert
            training (``buffer``) and TAD settings. ``tad.enabled`` must match ``detector``.
        detector: ``"tad"`` (TAD's experts, trained here or taken from ``buffer``) or ``"cleanlab"``.
        buffer: a trajectory store of TAD experts trained on the same data and labels; None = train them in
            ``cfg.out/buffer`` (resumed when re-run).
        folds: K of ``"cleanlab"``'s cross-validation.
        pruned: also write ``cfg.out/pruned/<dataset>.npz`` without the flagged samples.
        progress: tqdm bars.

    Raises:
        ConfigError: an unknown detector, or ``tad.enabled`` not matching it; and whatever loading the data
            raises (clear one-line messages).
    """
    from .engine.audit import (
        audit_experts,
        detection_metrics,
        trust_rounds,
        write_audit,
        write_pruned,
    )
    from .engine.config import ConfigError, to_dict
    from .engine.runlog import RunLog
    from .engine.trajectories import TrajectoryError

    if detector not in DETECTORS:
        raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if cfg.tad.enabled != (detector == "tad"):
        raise ConfigError(f"detector {detector!r} needs tad.enabled={str(detector == 'tad').lower()}")
    if detector == "cleanlab":
        from .confident_learning import require_cleanlab

        try:
            require_cleanlab()  # before any training
        except ImportError as exc:
            raise ConfigError(str(exc)) from exc
    out = run_folder(cfg.out)
    pipe = method_adapter(cfg.method)[0](cfg, progress=progress)
    data = prepare_data(cfg.data)
    if detector == "cleanlab":
        smallest = int(torch.bincount(data.labels, minlength=data.dataset.num_classes).min())
        if not 2 <= folds <= smallest:
            raise ConfigError(f"--folds {folds}: the cross-validation needs 2 to {smallest} folds (the smallest class "
                              f"holds {smallest} samples under the given labels)")
    reuse = check_run(pipe, data, out, Path(buffer) if buffer else None) if detector == "tad" else None
    if detector == "cleanlab":
        fold_pipe, fold_sets = _fold_sets(pipe, data, folds)
        for k, (held, rest) in enumerate(fold_sets):  # a folder of another --folds or seed: refused before writing
            try:
                fold_pipe.check_store(rest, data.labels[~held], out / "folds" / f"fold{k}")
            except TrajectoryError as exc:
                raise ConfigError(f"{out / 'folds'} holds the fold models of another cross-validation (other "
                                  f"--folds, seed or labels: {exc}); give that run's --folds, or delete "
                                  f"{out / 'folds'} to train new ones") from exc
    out.mkdir(parents=True, exist_ok=True)  # every check passed: start writing
    save_labels(data, out)
    log = RunLog(out / "result_audit.json", to_dict(cfg), cfg.seed, pipe.device)
    log.record["detector"] = detector
    log.result(noise_rate=data.noise_rate)
    clean = data.dataset.train_labels if data.noise_rate > 0 else None  # noise was applied: truth known
    rounds: list[dict[str, Any]] = []
    if detector == "tad":
        assert pipe.hooks is not None  # tad.enabled (checked above): the pipeline built TAD's hooks
        store = stage_buffer(pipe, data, out, log, reuse)
        start = time.perf_counter()
        table = audit_experts(store, pipe.network(data.dataset), pipe.preprocessor(data.dataset, store),
                              data.dataset.train_images, data.labels, pipe.hooks, clean_labels=clean,
                              device=pipe.device, group=cfg.buffer.experts_per_group,
                              batch_size=cfg.buffer.eval_batch_size, progress=progress)
        rounds = trust_rounds(store, clean)
    else:
        probs = _fold_stage(fold_pipe, fold_sets, data, out, log)
        start = time.perf_counter()
        from .engine.audit import confident_learning_table

        table = confident_learning_table(data.labels, probs, data.dataset.num_classes, clean)
    files = write_audit(table, out, data.dataset.class_names, rounds,
                        title=f"Label audit ({detector}) of {data.dataset.name}")
    if pruned:
        files["pruned"] = str(write_pruned(data.dataset, table, out / "pruned" / f"{data.dataset.name}.npz"))
    metrics = detection_metrics(table)
    log.stage("audit", time.perf_counter() - start, flagged=int(table.is_label_issue.sum()), files=files)
    if metrics:
        log.result(detection={k: v for k, v in metrics.items() if k != "per_class"})
    return AuditResult(table, metrics, files, log.path)


def _fold_sets(pipe: Any, data: TrainingData, folds: int) -> tuple[Any, list[tuple[torch.Tensor, ImageDataset]]]:
    """The cross-validation of ``--detector cleanlab``: the pipeline that trains each fold's ConvNet (plain
    cross-entropy, the run's expert recipe, one expert) and, per fold k, ``(held, rest)``: bool [N], the samples
    of fold k, and the dataset of the other folds it trains on."""
    from .engine.audit import kfold_assignment

    cfg = pipe.config
    fold_cfg = dataclasses.replace(cfg, buffer=dataclasses.replace(cfg.buffer, num_experts=1, experts_per_group=1))
    ds = data.dataset
    assign = kfold_assignment(data.labels, folds, cfg.seed)
    sets = []
    for k in range(folds):
        held = assign == k
        sets.append((held, dataclasses.replace(ds, train_images=ds.train_images[~held],
                                               train_labels=ds.train_labels[~held])))
    return type(pipe)(fold_cfg, progress=pipe.progress), sets


def _fold_stage(fold_pipe: Any, fold_sets: list[tuple[torch.Tensor, ImageDataset]], data: TrainingData, out: Path,
                log: Any) -> torch.Tensor:
    """cleanlab's out-of-sample probabilities float [N, C]: fold k's ConvNet (:func:`_fold_sets`) is trained on
    the other folds into ``out/folds/fold<k>`` (resumed when it is finished) and predicts fold k. Records the
    stage ``folds``."""
    from .engine.audit import fold_probabilities

    start = time.perf_counter()
    ds = data.dataset
    pre = fold_pipe.preprocessor(ds)  # fitted on the whole training set once, shared by the folds
    net = fold_pipe.network(ds)
    probs = torch.zeros(len(data.labels), ds.num_classes)
    for k, (held, rest) in enumerate(fold_sets):
        store = fold_pipe.buffer(rest, data.labels[~held], out / "folds" / f"fold{k}")
        params = store.load_expert(0).params[-1].to(fold_pipe.device)
        probs[held] = fold_probabilities(net, params, ds.train_images[held], pre,
                                         fold_pipe.config.buffer.eval_batch_size)
    log.stage("folds", time.perf_counter() - start, folds=len(fold_sets))
    return probs
