"""A ``tad`` run: its settings, data, stages (buffer, distill, eval), resume and records -- the commands' work.

:mod:`tad_plugin.cli` parses the arguments and dispatches to :data:`COMMANDS`; :mod:`tad_plugin.cli_audit` runs its
stages with the same functions. A run folder (``--out``) holds ``labels.pt``, ``buffer/``, ``distill_checkpoint.pt``,
``distilled.pt`` and the record ``result_<command>.json``; a stage already finished there is resumed, not redone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .data import ImageDataset
from .engine.config import load_yaml
from .engine.phases import PHASES_FILE, distill_parts, expert_parts, load_phases
from .files import output_folder
from .trust_report import (
    TrustReport,
    later_recalls_text,
    least_precise,
    least_recalled,
    per_class_trust,
)

if TYPE_CHECKING:
    from .engine.config import DataConfig, RunConfig
    from .engine.matching import DistillResult
    from .engine.pipeline import Pipeline
    from .engine.preprocess import Preprocessor
    from .engine.runlog import RunLog
    from .engine.trajectories import TrajectoryStore

__all__ = [
    "COMMANDS",
    "DEMO_CONFIG",
    "METHODS_GROUP",
    "QUICK_DEMO_OVERRIDES",
    "TrainingData",
    "begin",
    "best_line",
    "check_run",
    "config_from_args",
    "cpu_threads",
    "expert_curve",
    "json_safe",
    "method_adapter",
    "methods",
    "prepare",
    "prepare_data",
    "record_distill",
    "run_folder",
    "save_labels",
    "settings_hint",
    "settings_line",
    "stage_buffer",
    "stage_distill",
    "stage_eval",
    "trust_stats",
    "trust_summary",
]


log = logging.getLogger("tad_plugin.runs")

#: Consensus levels the run record reports the final trusted space at (the fraction of experts whose last
#: epoch trained on a sample); the distillation's real initialisation draws from level 0.5.
VOTE_LEVELS = (0.5, 0.75, 1.0)


#: ``tad demo``'s settings: digits (8x8 grey, 1,294 train / 503 test images), 40% symmetric noise


#: (the package's configs/demo.yaml).


DEMO_CONFIG: dict[str, Any] = load_yaml(Path(__file__).with_name("configs") / "demo.yaml")


#: ``tad demo --quick``: the same pipeline, small enough for the test suite (well under a minute).


QUICK_DEMO_OVERRIDES: dict[str, Any] = {
    "buffer": {"num_experts": 2, "epochs": 5, "experts_per_group": 2},
    "tad": {"warmup_epochs": 1, "anchor_epoch": 3, "anchor_ipc": 2, "anchor_iterations": 3},
    "distill": {"iterations": 10, "syn_steps": 5, "max_start_epoch": 2, "ipc": 2, "eval_every": 5},
    "eval": {"num_eval": 2, "epochs": 20},
}


_FLAG_KEYS = {  # argparse dest -> config key
    "dataset": "data.dataset", "data_root": "data.root", "download": "data.download",
    "noise": "data.noise", "noise_rate": "data.noise_rate", "noise_seed": "data.noise_seed",
    "cifar_n": "data.cifar_n", "label_set": "data.label_set", "zca": "data.zca", "tad": "tad.enabled",
    "device": "device", "out": "out", "seed": "seed", "ipc": "distill.ipc", "method": "method",
    "num_experts": "buffer.num_experts", "epochs": "buffer.epochs", "iterations": "distill.iterations",
}


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from .engine.config import merge

    out: dict[str, Any] = {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        node: dict[str, Any] = {}
        leaf = node
        parts = key.split(".")
        for part in parts[:-1]:
            leaf = leaf.setdefault(part, {})
        leaf[parts[-1]] = value
        out = merge(out, node)
    data = out.get("data", {})
    if "cifar_n" in data and "noise" not in data:  # the labels named here replace a --config's synthetic noise
        data["noise"] = None
        data.setdefault("noise_rate", 0.0)
    elif "noise" in data and "cifar_n" not in data:  # and synthetic noise named here a --config's label file
        data["cifar_n"] = None
    return out


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    """The run config: the method's defaults for the dataset/IPC < ``base`` < ``--config`` < flags <
    ``--set`` (the method is ``method`` from any of them, default ``mtt``).

    Raises:
        ConfigError: an unknown key or a bad value (the message names it).
    """
    from .engine.config import RunConfig, apply_overrides, from_dict, load_yaml, merge

    user: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    user = apply_overrides(merge(user, _flag_overrides(args)), getattr(args, "sets", []))
    chosen = merge(base or {}, user)
    data: dict[str, Any]
    distill: dict[str, Any]
    data, distill = (chosen[k] if isinstance(chosen.get(k), dict) else {} for k in ("data", "distill"))
    dataset, ipc = data.get("dataset", "digits"), distill.get("ipc", 10)  # a scalar section: from_dict says so
    defaults = method_adapter(chosen.get("method", "mtt"))[1](dataset, ipc if isinstance(ipc, int) else 10)
    return from_dict(RunConfig, merge(defaults, chosen)).validate()


#: The entry-point group distillers register in: ``name = module:PipelineSubclass`` (the class's ``defaults``
#: gives its settings for a dataset and IPC). MTT, FTD, DATM and ATT register there too (setup.cfg).
METHODS_GROUP = "tad_plugin.methods"


def methods() -> list[str]:
    """The names of the registered distillers (:data:`METHODS_GROUP`), sorted."""
    return sorted({ep.name for ep in _method_entry_points(tuple(sys.path))})


@functools.lru_cache(maxsize=8)
def _method_entry_points(path: tuple[str, ...]) -> tuple[importlib.metadata.EntryPoint, ...]:
    """:data:`METHODS_GROUP`'s entry points of the distributions on ``path`` (``sys.path``; a new path reads them
    again). Cached: reading every installed distribution's metadata takes milliseconds, and configs ask often."""
    return tuple(importlib.metadata.entry_points(group=METHODS_GROUP))


def method_adapter(method: str) -> tuple[type[Pipeline], Callable[[str, int], dict[str, Any]]]:
    """``(pipeline class, defaults(dataset, ipc))`` of the distiller registered as ``method`` in
    :data:`METHODS_GROUP`.

    Raises:
        ConfigError: an unknown method, a registration that is not a ``Pipeline`` subclass with ``defaults``, or
            ``tad_plugin.adapters`` missing from the imported package (a source checkout on ``sys.path``
            shadowing a non-editable install).
    """
    from .engine.config import ConfigError
    from .engine.pipeline import Pipeline

    found = [ep for ep in _method_entry_points(tuple(sys.path)) if ep.name == method]
    if not found:
        known = methods()
        raise ConfigError(f"method must be one of {', '.join(known) or '(none registered)'}, got {method!r}"
                          + ("" if known else f"; the {METHODS_GROUP} entry points come with the installed "
                             "package: install it with `python -m pip install -e .`"))
    try:
        pipeline = found[0].load()
    except ModuleNotFoundError as exc:
        if exc.name not in (f"{__package__}.adapters", f"{__package__}.adapters.{method}"):
            raise
        raise ConfigError(
            f"{__package__}.adapters is missing from the tad_plugin imported from {Path(__file__).parent}: "
            "setup.cfg installs the checkout's adapters/ folder as tad_plugin.adapters, so a source checkout on "
            "sys.path (python run from the checkout's root) hides them when the install is not editable. Install "
            "with `python -m pip install -e .`, or run from outside the checkout") from exc
    defaults = getattr(pipeline, "defaults", None)
    if not (isinstance(pipeline, type) and issubclass(pipeline, Pipeline) and callable(defaults)):
        raise ConfigError(f"the {METHODS_GROUP} entry point {method!r} = {found[0].value} is not a Pipeline subclass "
                          f"with defaults(dataset, ipc); fix the package that registers it")
    return pipeline, defaults


@dataclass
class TrainingData:
    """The dataset with the labels a run trains on.

    Attributes:
        dataset: images and clean labels (train and test).
        labels: int64 [N], the (noisy) training labels the run uses.
        noise_rate: measured fraction of ``labels`` that differ from the clean ones.
    """

    dataset: ImageDataset
    labels: torch.Tensor
    noise_rate: float


def prepare_data(cfg: DataConfig, out: Path | None = None) -> TrainingData:
    """Load the dataset and corrupt its labels as configured; save the labels to ``out/labels.pt``.

    Raises:
        DatasetError / ValueError / FileNotFoundError: with the problem and the fix.
    """
    from .data import DatasetError, check_images_vary, load_dataset
    from .noise import corrupt_labels, noise_rate

    ds = load_dataset(cfg.dataset, root=cfg.root, download=cfg.download)
    check_images_vary(ds)
    counts = ds.class_counts()
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        names = ", ".join(repr(ds.class_names[c]) for c in empty[:8]) + (
            f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        top = int(ds.train_labels.max())
        raise DatasetError(f"{ds.name}: class(es) {names} have no training images (of {ds.num_classes} named "
                           f"classes; the largest training label, {top}, has {int(counts[top])} sample(s): a stray "
                           f"label?); label noise would fill them with wrong labels only and their distilled images "
                           f"could never be right: fix the labels / class_names, or drop those classes from the "
                           f"dataset")
    labels = corrupt_labels(ds.train_labels, cfg, ds.num_classes, name=ds.name)
    data = TrainingData(ds, labels, noise_rate(labels, ds.train_labels))
    if out is not None:
        save_labels(data, out)
    return data


def save_labels(data: TrainingData, out: Path) -> None:
    """Write ``out/labels.pt``: the run's labels, the clean ones and the measured noise rate."""
    from .files import atomic_torch_save

    atomic_torch_save({"labels": data.labels, "clean": data.dataset.train_labels, "noise_rate": data.noise_rate},
                      out / "labels.pt")


def stage_buffer(pipe: Pipeline, data: TrainingData, out: Path, log: RunLog,
                  reuse: TrajectoryStore | None = None) -> TrajectoryStore:
    start = time.perf_counter()
    clean = data.dataset.train_labels if data.noise_rate > 0 else None  # noise was applied: truth known
    if reuse is None:
        if (out / "buffer" / "manifest.json").is_file() and pipe.ranks.is_main:
            from .engine.trajectories import TrajectoryStore

            done = len(TrajectoryStore.open(out / "buffer").finished())
            if 0 < done < pipe.config.buffer.num_experts:
                print(f"resuming {out / 'buffer'}: {done} of {pipe.config.buffer.num_experts} experts already trained",
                      file=sys.stderr)
        store = pipe.buffer(data.dataset, data.labels, out / "buffer", clean_labels=clean)
        info: dict[str, Any] = {"experts": len(store)}
    else:
        store = reuse
        info = {"experts": len(store.finished()), "reused": str(store.root), "reused_meta": store.meta}
    info["expert_test_acc"] = expert_curve(store)
    phases = load_phases(store.root / PHASES_FILE)
    if phases is not None:  # where the experts' time went (the buffer's own training, also when reused here)
        info["phases"] = phases
    report = store.root / "trust_report.json"
    if pipe.tad and report.is_file():
        info["trust_report"] = str(report)
        later = TrustReport.load_json(report).later_recalls()
        if later is not None:
            info["later_recalls"] = later
    trust = store.final_trust() if pipe.tad else None
    if trust is not None:
        info.update(trust_stats(trust, data, clean_known=clean is not None))
    log.stage("buffer", time.perf_counter() - start, **info)
    return store


def expert_curve(store: TrajectoryStore) -> list[float]:
    """The experts' mean clean test accuracy (fractions, 4 decimals) after each epoch, over the finished experts of
    ``store``: how good the trajectories that distillation matches are (a record's ``stages.buffer.expert_test_acc``).
    """
    return [round(float(a), 4) for a in store.test_accuracy().mean(0)]


def _reused_store(pipe: Pipeline, data: TrainingData, root: Path) -> TrajectoryStore:
    """The finished experts of another run (``tad run --buffer DIR``), checked against this run: other labels,
    the other arm, other preprocessing (ZCA or not) or too few finished experts are refused; another training
    recipe (optimizer, learning rate, momentum, weight decay, DSA, GSAM's rho / alpha) is warned about. Batch
    size and epoch count are not compared (ATT's buffer script differs from MTT's only in its batch; FTD reads
    DATM's first epochs)."""
    from .engine.config import ConfigError, to_dict
    from .engine.pipeline import labels_fingerprint
    from .engine.trajectories import TrajectoryStore

    store = TrajectoryStore.open(root)
    if store.meta.get("labels") != labels_fingerprint(data.labels):
        raise ConfigError(f"the experts in {root} were trained on other labels than this run's (another noise "
                          f"setting or seed); reuse only a buffer of the same data and noise")
    if (store.meta.get("tad") is not None) != pipe.tad:
        raise ConfigError(f"the experts in {root} were trained {'with' if store.meta.get('tad') else 'without'} TAD "
                          f"but this run has TAD {'on' if pipe.tad else 'off'}; reuse a buffer of the same arm")
    zca = store.meta.get("zca")
    if zca is not None and zca != pipe.config.data.zca:
        kind = "ZCA-whitened" if zca else "unwhitened"
        raise ConfigError(f"the experts in {root} were trained on {kind} images but this run has "
                          f"data.zca={str(pipe.config.data.zca).lower()}: their trajectories live in another input "
                          f"space; reuse a buffer of the same preprocessing (or set --{'' if zca else 'no-'}zca)")
    have, want = len(store.finished()), pipe.config.buffer.num_experts
    if not have:
        raise ConfigError(f"{root} holds no finished experts; train them first (`tad buffer --out ...`)")
    if have < want:
        raise ConfigError(f"{root} holds {have} finished experts but this run asks for {want} "
                          f"(buffer.num_experts): finish training them first (`tad buffer --out ...` resumes), "
                          f"or pass --num-experts {have} to distil from those")
    trained, ours = store.meta.get("buffer") or {}, to_dict(pipe.config.buffer)  # as the store's meta was made
    keys: tuple[str, ...] = ("optimizer", "lr", "momentum", "weight_decay", "dsa")
    keys += ("rho", "alpha") if ours["optimizer"] == "gsam" else ()
    differ = [f"{k} {trained[k]!r} (this method: {ours[k]!r})" for k in keys if k in trained and trained[k] != ours[k]]
    if differ:
        log.warning("the experts in %s were trained with another recipe than %s's: %s; the run record names the "
                    "buffer, say so beside its numbers", root, pipe.name.upper(), ", ".join(differ))
    return store


def trust_stats(trust: tuple[torch.Tensor, torch.Tensor], data: TrainingData,
                 clean_known: bool = True) -> dict[str, Any]:
    """Size, precision and clean recall of the final trusted space (votes >= 0.5, with the experts' modal
    labels) against the clean labels, the same at every level of :data:`VOTE_LEVELS` (``by_vote``), and
    class by class at level 0.5 (``per_class``, see :func:`~tad_plugin.trust_report.per_class_trust`).
    ``clean_known`` False (the run's labels are the dataset's own, no truth to compare with): sizes only."""
    votes, labels = trust
    clean = labels == data.dataset.train_labels

    def stats(trusted: torch.Tensor) -> dict[str, Any]:
        n = int(trusted.sum())
        sizes = {"trusted_size": n, "trusted_fraction": n / len(trusted)}
        if not clean_known:
            return sizes
        return {**sizes, "trusted_precision": float(clean[trusted].float().mean()) if n else float("nan"),
                "clean_recall": float(trusted[clean].float().mean()) if bool(clean.any()) else float("nan")}

    # votes are k / E, a correctly rounded division: exact wherever k / E equals a level
    by_vote = {f"{level:g}": stats(votes >= level) for level in VOTE_LEVELS}
    # the headline is the majority (distill.init_consensus's default: where the initial images come from)
    headline = {**by_vote["0.5"], "by_vote": by_vote}
    if not clean_known:
        return headline
    return {**headline, "per_class": per_class_trust(votes >= 0.5, labels, data.dataset.train_labels,
                                                     data.dataset.num_classes)}


def trust_summary(res: dict[str, Any], class_names: Sequence[str]) -> str | None:
    """The final trusted space of a TAD run in a few lines (None without one): its size, and when the clean
    labels were known its precision, recall and three least precise classes with their main intruders."""
    if "trusted_size" not in res:
        return None
    line = f"final trusted space (trusted by >= half of the experts): {res['trusted_size']} samples " \
           f"({100 * res['trusted_fraction']:.1f}%)"
    if "trusted_precision" not in res:
        return line
    line += f", precision {100 * res['trusted_precision']:.1f}%, recall {100 * res['clean_recall']:.1f}%"
    for r in least_precise(res.get("per_class", [])):
        others = ", ".join(f"{m} of {class_names[k]}" for k, m in r["intruders"]) or "none"
        precision = r["precision"]
        assert precision is not None  # least_precise leaves out the classes without a precision
        line += f"\n  class {class_names[r['class']]}: {r['trusted']} trusted, {100 * precision:.1f}% right " \
                f"(others: {others})"
    low = least_recalled(res.get("per_class", []))
    if low:
        parts = []
        for r in low:
            recall = r["clean_recall"]
            assert recall is not None  # least_recalled leaves out the classes without a recall
            parts.append(f"{class_names[r['class']]} {100 * recall:.1f}%")
        line += "\n  least recalled: " + ", ".join(parts) + " of their correctly labelled samples trusted"
    later = later_recalls_text(res.get("later_recalls"))
    if later:
        line += "\n  " + later
    return line


def stage_distill(pipe: Pipeline, store: TrajectoryStore, data: TrainingData, out: Path,
                   log: RunLog) -> DistillResult:
    from .engine.config import to_dict
    from .engine.matching import ROUTE_SETTINGS
    from .engine.pipeline import load_distilled, save_distilled

    path = out / "distilled.pt"
    # what the images depend on: a finished run rerun on another gradient route keeps its images
    distill = {k: v for k, v in to_dict(pipe.config.distill).items() if k not in ROUTE_SETTINGS}
    settings = {"distill": distill, "experts": store.finished(), "seed": pipe.config.seed, "method": pipe.name}
    title = f"{pipe.name.upper()} on {data.dataset.name}"
    if path.is_file():
        try:
            result, pre = load_distilled(path)
        except ValueError as exc:  # a damaged copy in our own run folder: made again, then replaced whole
            logging.getLogger(__name__).warning("%s: distilling again", exc)
        else:
            if result.settings == json_safe(settings):
                if pipe.ranks.is_main and not all((out / f).is_file() for f in ("distilled.png", "curve.png")):
                    _draw_distill(result, pre, out, title, data.dataset.class_names)  # a run killed before them
                record_distill(log, result, 0.0, resumed=True)
                return result
    checkpoint = out / "distill_checkpoint.pt"
    if checkpoint.is_file() and pipe.ranks.is_main:
        print(f"resuming the distillation from {checkpoint}", file=sys.stderr)
    start = time.perf_counter()
    result = pipe.distill(store, data.dataset, data.labels, checkpoint=checkpoint)
    if pipe.ranks.is_main:  # the ranks hold the same images
        pre = pipe.preprocessor(data.dataset, store)
        save_distilled(result, path, pre, settings=json_safe(settings))
        _draw_distill(result, pre, out, title, data.dataset.class_names)
    record_distill(log, result, time.perf_counter() - start, images=list(result.images.shape))
    return result


def _draw_distill(result: DistillResult, pre: Preprocessor, out: Path, title: str,
                  class_names: tuple[str, ...] | None) -> None:
    """``out/distilled.png`` (the images, a row per class) and ``out/curve.png`` (accuracy and step size per
    evaluation), when matplotlib is installed; the same numbers are in the run record either way."""
    from .engine.figures import save_curve, save_image_grid

    try:
        save_image_grid(result.images, result.labels, pre, out / "distilled.png", class_names,
                        title=f"{title}: distilled images (last iteration)")
        save_curve(result, out / "curve.png", title=f"{title}: distillation")
    except ImportError:
        log.info("matplotlib is not installed: no distilled.png / curve.png (pip install 'tad_plugin[plot]')")


def record_distill(log: RunLog, result: DistillResult, seconds: float, **info: Any) -> None:
    """The distill stage in the run record: its step size, the evaluations made during distillation
    (``distill.eval_every``: iteration, step size, mean/std accuracy of the images and of the EMA images,
    the evaluation's seconds),
    the largest logged matching loss and the log points above ``UNSTABLE_LOSS`` (a divergence shows there),
    and, as a result, the best of the evaluations -- the number the papers report."""
    curve = []
    for h in result.history:
        if "eval" in h:
            row = {"iteration": h["iteration"], "syn_lr": h.get("syn_lr"), "mean": h["eval"]["mean"],
                   "std": h["eval"]["std"], **({"seconds": h["eval"]["seconds"]} if "seconds" in h["eval"] else {})}
            if "eval_ema" in h:
                row.update(ema_mean=h["eval_ema"]["mean"], ema_std=h["eval_ema"]["std"])
            curve.append(row)
    from .engine.matching import UNSTABLE_LOSS

    losses = [(h["iteration"], h["loss"]) for h in result.history if "loss" in h]
    unstable = [it for it, loss in losses if loss > UNSTABLE_LOSS]  # the warned-about regime, kept in the record
    if losses:
        info.update(max_matching_loss=max(loss for _, loss in losses), unstable_loss_iterations=unstable)
    initial = [h["initial_soft_labels"] for h in result.history if "initial_soft_labels" in h]
    if initial:  # DATM: how peaked the soft labels started and ended
        from .engine.matching import soft_label_summary

        info.update(initial_soft_labels=initial[0], final_soft_labels=soft_label_summary(result.labels))
    if result.seconds:  # the loop's own time over every attempt (its evaluations included); 0 when unknown
        info["loop_seconds"] = round(result.seconds, 3)
    log.stage("distill", seconds, syn_lr=result.syn_lr, **info, **({"evaluations": curve} if curve else {}))
    if result.best is not None:
        log.result(test_acc_best_mean=result.best["mean"], test_acc_best_std=result.best["std"],
                   best_iteration=result.best["iteration"], best_of=result.best["which"])


def json_safe(obj: Any) -> Any:
    """``obj`` round-tripped through JSON (tuples -> lists), so stored and fresh settings compare equal."""
    return json.loads(json.dumps(obj, default=str))


def stage_eval(pipe: Pipeline, result: DistillResult, data: TrainingData, log: RunLog,
                preprocess: Preprocessor | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    ev = pipe.evaluate(result, data.dataset, preprocess)
    out = {"test_acc_mean": ev.mean, "test_acc_std": ev.std, "test_acc": list(ev.accuracies)}
    if result.ema_images is not None:  # FTD / ATT: the EMA images too, from fresh nets
        ema = pipe.evaluate(dataclasses.replace(result, images=result.ema_images), data.dataset, preprocess)
        out.update(test_acc_ema_mean=ema.mean, test_acc_ema_std=ema.std, test_acc_ema=list(ema.accuracies))
    log.stage("eval", time.perf_counter() - start, **out)
    log.result(**out)
    return out


def run_folder(out: str | os.PathLike[str]) -> Path:
    """The run folder ``--out`` names. Raises ConfigError when it is empty (it would write into the working
    directory), OutputPathError when it names a file or lies under one."""
    from .engine.config import ConfigError

    if not str(out).strip():
        raise ConfigError("--out is empty: name the run folder, e.g. --out runs/tad (nothing is written into the "
                          "working directory itself)")
    return output_folder(out, "--out")


def prepare(args: argparse.Namespace, base: dict[str, Any] | None = None,
             out: Path | None = None) -> tuple[RunConfig, Pipeline, Path, TrainingData]:
    """The run's config, pipeline, folder and data, checked (settings, device, run folder, dataset and labels);
    nothing is written. A command adds its own checks and then calls :func:`begin`."""
    from .engine.distributed import init_from_env, resolve_device

    cfg = config_from_args(args, base)
    folder = run_folder(out if out is not None else cfg.out)
    resolve_device(cfg.device)  # an unknown name or a GPU this machine lacks: refused here
    ranks = init_from_env(cfg.device)  # one process unless launched by torchrun
    pipe = method_adapter(cfg.method)[0](cfg, progress=not getattr(args, "no_progress", False), ranks=ranks)
    if pipe.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and hasattr(args, "stack"):
        args.stack.enter_context(cpu_threads(CPU_THREADS))  # until the command ends
    return cfg, pipe, folder, prepare_data(cfg.data)


#: Threads of a run on the CPU (torch and every OpenMP / BLAS pool) unless ``OMP_NUM_THREADS`` is set. One:


#: OpenMP threads spin while they wait for each other, so on a busy machine more threads than free cores slow


#: a run down many times over, and the CPU runs (digits, the tests) are made of small operations that one


#: thread does about as fast; one thread also gives the same numbers on every machine.


CPU_THREADS = 1


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` threads in torch (intra-op) and in every OpenMP / BLAS pool of the process
    (scikit-learn's KMeans, NumPy's BLAS, FAISS; through threadpoolctl, a scikit-learn dependency); restores
    the earlier counts after."""
    import sklearn.cluster  # noqa: F401  (the pools are capped as loaded: load those a run uses first)
    from threadpoolctl import threadpool_limits

    from .search import faiss_available

    faiss_available()  # imports FAISS when installed
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def begin(args: argparse.Namespace, cfg: RunConfig, pipe: Pipeline, out: Path,
           data: TrainingData | None = None) -> RunLog:
    """Start writing into the run folder ``out`` once every check has passed: the record
    ``result_<command>.json`` and, with ``data``, ``labels.pt``. Notes ``out`` in ``args.started`` (what a
    Ctrl-C reports as kept)."""
    from .engine.config import to_dict
    from .engine.runlog import RunLog

    out.mkdir(parents=True, exist_ok=True)
    getattr(args, "started", []).append(out)
    log = RunLog(out / f"result_{args.command}.json", to_dict(cfg), cfg.seed, pipe.device, enabled=pipe.ranks.is_main)
    log.record["processes"] = pipe.ranks.world_size
    log.write()
    if data is not None and pipe.ranks.is_main:
        save_labels(data, out)
    if pipe.ranks.is_main and args.command != "demo":
        print(settings_line(cfg), flush=True)
        hint = settings_hint(cfg)
        if hint:
            print(hint, flush=True)
    return log


def settings_line(cfg: RunConfig) -> str:
    """One line with the settings a run is most often wrong about (printed at its start)."""
    b, d, data = cfg.buffer, cfg.distill, cfg.data
    tad = "TAD on" if cfg.tad.enabled else "TAD off"
    if data.cifar_n is not None:
        labels = f"labels {data.label_set} of {Path(data.cifar_n).name}"
    elif data.noise is not None and data.noise_rate > 0:
        labels = f"{100 * data.noise_rate:g}% {data.noise} noise (seed {data.noise_seed})"
    else:
        labels = "labels as loaded"
    return (f"{cfg.method.upper()} on {data.dataset}, {labels}: IPC {d.ipc}, ZCA {'on' if data.zca else 'off'}, "
            f"{b.num_experts} experts x {b.epochs} epochs ({b.optimizer}), {d.iterations} iterations "
            f"(syn_steps {d.syn_steps}, lr_img {d.lr_img:g}, lr_teacher {d.lr_teacher:g}), {tad}, seed {cfg.seed}")


def settings_hint(cfg: RunConfig) -> str | None:
    """A hint for a TAD run under systematic (asymmetric) noise without the two remedies measured for it, else None."""
    t = cfg.tad
    if not (t.enabled and (cfg.data.noise or "").startswith("asymmetric")):
        return None
    if t.balance_classes and t.warmup_confidence_penalty > 0:
        return None
    return ("hint: under asymmetric noise, --set tad.warmup_confidence_penalty=1 --set tad.balance_classes=true "
            "measured 58.7% instead of 52.1% (CIFAR-10 asym40, MTT, one seed; "
            "examples/configs/cifar10_asym40_ipc10.yaml sets both; the paper's TAD has neither)")


def _cmd_buffer(args: argparse.Namespace) -> int:
    cfg, pipe, out, data = prepare(args)
    pipe.check_data(data.dataset, data.labels)
    pipe.check_resume(data.dataset, data.labels, out, distill=False)
    log = begin(args, cfg, pipe, out, data)
    log.result(noise_rate=data.noise_rate)
    stage_buffer(pipe, data, out, log)
    print(f"experts in {out / 'buffer'}; record {log.path}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from .engine.trajectories import TrajectoryStore

    cfg, pipe, out, data = prepare(args)
    pipe.check_data(data.dataset, data.labels, buffer=False)
    store = TrajectoryStore.open(args.buffer or out / "buffer")
    if not store.finished():
        raise ValueError(f"{store.root} holds no finished experts; run the buffer stage first (`tad buffer`)")
    pipe.check_resume(data.dataset, data.labels, out, buffer=False)
    log = begin(args, cfg, pipe, out)
    stage_distill(pipe, store, data, out, log)
    print(f"distilled set in {out / 'distilled.pt'}; record {log.path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine.pipeline import load_distilled

    cfg, pipe, out, data = prepare(args)
    path = Path(args.synthetic or out / "distilled.pt")
    result, pre = load_distilled(path)
    _check_fits(result, data.dataset, path)
    if args.best:  # refused before anything is written when the set kept no best snapshot
        result = result.best_result()
    log = begin(args, cfg, pipe, out)
    counts = torch.bincount(result.labels.argmax(1) if result.labels.is_floating_point() else result.labels)
    log.result(evaluated_set_ipc=int(counts.max()) if counts.numel() else 0)  # the set's, not the settings'
    if args.best:
        best = result.best
        assert best is not None  # a set with a best snapshot records its evaluation (both are kept together)
        log.result(evaluated_set=f"best of distillation (iteration {best['iteration']}, {best['which']})")
    res = stage_eval(pipe, result, data, log, pre.to(pipe.device))
    print(f"test accuracy {100 * res['test_acc_mean']:.2f} +- {100 * res['test_acc_std']:.2f} %; record {log.path}")
    return 0


def _check_fits(result: DistillResult, dataset: ImageDataset, path: Path) -> None:
    """Refuse a distilled set made from another dataset than ``dataset`` (other image shape or more classes)."""
    from .engine.config import ConfigError

    shape, want = tuple(result.images.shape[1:]), (dataset.channels, *dataset.image_size)
    labels = result.labels
    classes = labels.shape[1] if labels.is_floating_point() else int(labels.max()) + 1 if labels.numel() else 0
    if shape != want or classes > dataset.num_classes:
        raise ConfigError(f"{path} holds {'x'.join(map(str, shape))} images of {classes} classes but {dataset.name} "
                          f"has {'x'.join(map(str, want))} images of {dataset.num_classes}: evaluate it on the "
                          f"dataset it was distilled from (--dataset)")


def check_run(pipe: Pipeline, data: TrainingData, out: Path, reuse: Path | None = None) -> TrajectoryStore | None:
    """The checks of a whole run (``tad run``, each arm of ``tad demo``) before it writes anything: the data
    against the settings, the run folder's earlier experts and checkpoint, the reused buffer (returned)."""
    pipe.check_data(data.dataset, data.labels, buffer=reuse is None)
    pipe.check_resume(data.dataset, data.labels, out, buffer=reuse is None)
    return _reused_store(pipe, data, reuse) if reuse is not None else None


def _pipeline(cfg: RunConfig, pipe: Pipeline, out: Path, log: RunLog, data: TrainingData,
              reuse: TrajectoryStore | None = None) -> dict[str, Any]:
    log.result(noise_rate=data.noise_rate)
    store = stage_buffer(pipe, data, out, log, reuse)
    result = stage_distill(pipe, store, data, out, log)
    return {**log.record["stages"]["buffer"], **stage_eval(pipe, result, data, log,
                                                            pipe.preprocessor(data.dataset, store))}


def time_summary(stages: dict[str, Any]) -> str | None:
    """One line on where a run's time went, from its record's ``stages`` (None when it has no timings): the
    experts' seconds with the shares of training, tests and TAD's work, and the distillation's with the share of
    its evaluations."""
    parts = []
    phases = stages.get("buffer", {}).get("phases") or {}
    buffer = {part: seconds for part, (seconds, _) in expert_parts(phases).items()}
    total = sum(buffer.values())
    if total > 0:
        train, test = buffer.get("train", 0.0), buffer.get("test", 0.0)
        tad = f", TAD {100 * (total - train - test) / total:.0f}%" if "trust loop" in phases else ""
        parts.append(f"experts {total:.0f} s (training {100 * train / total:.0f}%, "
                     f"tests {100 * test / total:.0f}%{tad})")
    distill = distill_parts(stages.get("distill", {}))
    if distill:
        wall = distill["matching"][0] + distill["evaluations"][0]
        parts.append(f"distillation {wall:.0f} s (evaluations {100 * distill['evaluations'][0] / wall:.0f}%)")
    return "time: " + ", ".join(parts) if parts else None


def _cmd_run(args: argparse.Namespace) -> int:
    cfg, pipe, out, data = prepare(args)
    reuse = check_run(pipe, data, out, Path(args.buffer) if args.buffer else None)
    log = begin(args, cfg, pipe, out, data)
    res = _pipeline(cfg, pipe, out, log, data, reuse)
    name = cfg.method.upper()
    for line in (trust_summary(res, data.dataset.class_names), time_summary(log.record["stages"])):
        if line:
            print(line)
    print(f"{name + ' + TAD' if cfg.tad.enabled else name}: test accuracy {100 * res['test_acc_mean']:.2f} +- "
          f"{100 * res['test_acc_std']:.2f} % (noise rate {data.noise_rate:.3f}); record {log.path}")
    best = best_line(log.record.get("results", {}), cfg.distill.iterations, out / "distilled.pt")
    if best:
        print(best)
    return 0


def best_line(results: dict[str, Any], iterations: int, distilled: Path) -> str | None:
    """A line on the best evaluation during distillation when it came before the last iteration (the final
    images are then not the best ones), naming where its set is kept; None otherwise."""
    if "best_iteration" not in results or results["best_iteration"] >= iterations:
        return None
    which = "EMA images" if results.get("best_of") == "ema" else "images"
    return (f"best during distillation: {100 * results['test_acc_best_mean']:.2f} +- "
            f"{100 * results['test_acc_best_std']:.2f} % at iteration {results['best_iteration']} ({which}); that set "
            f"is kept in {distilled} (`tad eval --best` with this run's --config and --out evaluates it again)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .engine.config import ConfigError, merge

    if args.tad is not None:
        raise ConfigError("tad demo runs both arms (without and with TAD); drop --tad/--no-tad")
    base = merge(DEMO_CONFIG, QUICK_DEMO_OVERRIDES) if args.quick else DEMO_CONFIG
    if args.quick:
        base = merge(base, {"out": "runs/demo-quick"})
    return _demo_arms(args, base)


def _demo_arms(args: argparse.Namespace, base: dict[str, Any]) -> int:
    from .files import atomic_write_json

    rows = []
    start = time.perf_counter()
    name = config_from_args(args, base).method.upper()
    root = run_folder(config_from_args(args, base).out)
    arms = []
    for arm, enabled in ((f"{name} (noisy)", False), (f"{name} + TAD", True)):  # both checked before either runs
        arm_args = argparse.Namespace(**{**vars(args), "sets": [*args.sets, f"tad.enabled={str(enabled).lower()}"]})
        cfg, pipe, out, data = prepare(arm_args, base, out=root / ("tad" if enabled else "noisy"))
        check_run(pipe, data, out)
        arms.append((arm, arm_args, cfg, pipe, out, data))
    for arm, arm_args, cfg, pipe, out, data in arms:
        print(f"\n{arm} (run folder {out}):", flush=True)
        log = begin(arm_args, cfg, pipe, out, data)
        res = _pipeline(cfg, pipe, out, log, data)
        rows.append({"arm": arm, "trusted_size": res.get("trusted_size", len(data.labels)),
                     "train_size": len(data.labels),
                     "trusted_precision": res.get("trusted_precision", 1.0 - data.noise_rate),
                     "test_acc_mean": res["test_acc_mean"], "test_acc_std": res["test_acc_std"],
                     "record": str(log.path), "trust_report": res.get("trust_report")})
    wall = time.perf_counter() - start
    _print_table(rows, data, wall)
    if rows[-1]["trust_report"]:
        print(f"\n{name} + TAD trust report (first expert; {rows[-1]['trust_report']}):")
        print(TrustReport.load_json(rows[-1]["trust_report"]).table(max_rows=12))
    atomic_write_json({"rows": rows, "noise_rate": data.noise_rate, "wall_time_s": round(wall, 1),
                       "threads": torch.get_num_threads(), "quick": bool(args.quick)}, root / "demo.json")
    return 0


def _print_table(rows: list[dict[str, Any]], data: TrainingData, wall: float) -> None:
    ds = data.dataset
    print(f"\n{ds.name}: {len(data.labels)} train / {len(ds.test_labels)} test images, measured noise rate "
          f"{data.noise_rate:.3f}; {wall:.0f} s")
    print(f"{'arm':<14} {'trusted space':>14} {'precision':>10} {'distilled-set test acc':>24}")
    for r in rows:
        acc = f"{100 * r['test_acc_mean']:.1f} +- {100 * r['test_acc_std']:.1f} %"
        print(f"{r['arm']:<14} {r['trusted_size']:>6} / {r['train_size']:<6} {100 * r['trusted_precision']:>9.1f}% "
              f"{acc:>24}")


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.trajectories import TrajectoryStore

    paths = TrajectoryStore.open(args.buffer).export_upstream(output_folder(args.to, "--to"), per_file=args.per_file)
    print(f"wrote {len(paths)} file(s): {', '.join(str(p) for p in paths)}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    """``tad plot RUN``: ``distilled.png`` and ``curve.png`` from ``RUN/distilled.pt``, ``trust_report.png``
    from ``RUN/buffer/trust_report.json`` (each that exists; rows of the image grid by class id)."""
    from .engine.pipeline import load_distilled
    from .plotting import pyplot

    try:
        pyplot("tad plot")  # without matplotlib the figures below would be skipped silently
    except ImportError as exc:
        raise ValueError(str(exc)) from exc
    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder at {run}; give the --out folder of a tad run / distill")
    wrote = []
    if (run / "distilled.pt").is_file():
        result, pre = load_distilled(run / "distilled.pt")
        _draw_distill(result, pre, run, run.name, None)
        wrote += [str(run / n) for n in ("distilled.png", "curve.png") if (run / n).is_file()]
    report = run / "buffer" / "trust_report.json"
    if report.is_file():
        TrustReport.load_json(report).plot(run / "buffer" / "trust_report.png", title=f"Trust report: {run.name}")
        wrote.append(str(run / "buffer" / "trust_report.png"))
    if not wrote:
        raise FileNotFoundError(f"{run} holds neither distilled.pt nor buffer/trust_report.json: nothing to draw")
    print("wrote " + ", ".join(wrote))
    return 0


#: ``tad <command>`` -> its handler (``args`` -> exit code).


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "buffer": _cmd_buffer, "distill": _cmd_distill, "eval": _cmd_eval, "run": _cmd_run, "demo": _cmd_demo,
    "export": _cmd_export, "plot": _cmd_plot}
