"""The buffer -> distill -> evaluate pipeline every trajectory-matching adapter runs, with TAD on or off.

:class:`Pipeline` holds what MTT, FTD, DATM and ATT share: expert training into a
:class:`~tad_plugin.engine.trajectories.TrajectoryStore` (SGD or GSAM, TAD's outer loop and, when
configured, its dual loop), the real initialisation from the trusted space, trajectory matching with
the :class:`~tad_plugin.engine.matching.MatchingConfig` built from the ``distill`` section, and the
standard evaluation. An adapter (``tad_plugin.adapters.<method>``) subclasses it with its name, its
defaults table and -- where its method differs -- :meth:`Pipeline.initial_images`,
:meth:`Pipeline.initial_labels` or :meth:`Pipeline.make_matcher`.

Settings only some methods implement (DATM's growing start window, learned soft labels, its
``samples_predicted_correctly`` initialisation) are refused with a :class:`ConfigError` by the
pipelines that do not implement them, instead of being ignored.

Every method runs on several processes (``torchrun``; :mod:`tad_plugin.engine.distributed`) through the
same code: ``ranks`` reaches the expert trainer (groups dealt out), the matcher (each inner minibatch
split, gradients summed exactly -- hard or learned soft labels with their momentum, the loss gate, the
adaptive length and the EMA images included, as all ranks hold the same student and loss) and the
evaluator (nets dealt out). Only rank 0 writes the trust report and the checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, overload

import torch

from ..checks import check_labels
from ..data import ImageDataset
from ..files import atomic_torch_save, torch_load
from ..manager import TADHooks, get_plugin_manager
from ..trust_report import TrustReport
from .config import ConfigError, RunConfig, to_dict
from .convnet import ConvNetConfig
from .distributed import Ranks, current, rank_device
from .dual_loop import DualLoop, DualLoopConfig, Embedder
from .evaluate import EvalResult, Evaluator
from .experts import EpochCallback, ExpertTrainer
from .matching import (
    DistillResult,
    MatchingConfig,
    TrajectoryMatcher,
    check_checkpoint,
    class_labels,
    read_checkpoint,
    real_init_indices,
)
from .preprocess import Preprocessor
from .trajectories import TrajectoryStore

__all__ = [
    "Pipeline",
    "TrajectoryList",
    "labels_fingerprint",
    "load_distilled",
    "method_defaults",
    "save_distilled",
    "table_row",
]

#: ``distill`` fields that only some pipelines implement, with their "unused" value.
_OPTIONAL_FIELDS: dict[str, Any] = {"window_start": None, "lr_labels": None}


#: Other names of a table's datasets (after lower-casing and dropping ``-``/``_``): Tiny ImageNet's own folder
#: ``tiny-imagenet-200`` and upstream's ``--dataset=Tiny``.
_DATASET_ALIASES = {"tinyimagenet200": "tinyimagenet", "tiny": "tinyimagenet"}


def dataset_key(dataset: str) -> str:
    """The name a method table knows ``dataset`` by: lower case without ``-``/``_``; for a path, its file
    name without the suffix (``"/data/CIFAR-10.npz"`` -> ``"cifar10"``); ``tiny-imagenet-200`` and ``tiny``
    are ``"tinyimagenet"``."""
    name = str(dataset)
    if "/" in name or os.sep in name or name.endswith(".npz"):
        name = Path(name.rstrip("/" + os.sep)).stem
    key = name.lower().replace("-", "").replace("_", "")
    return _DATASET_ALIASES.get(key, key)


def table_row(table: dict[tuple[str, int], dict[str, Any]], dataset: str, ipc: int) -> tuple[dict[str, Any], bool]:
    """A method's per-setting row for ``dataset`` at ``ipc``: ``(row without "zca", zca)``.

    ``table`` maps ``(dataset, ipc)`` to settings with a ``zca`` entry. An unlisted dataset gets the
    CIFAR-10 rows without ZCA (upstream whitened only the datasets of its tables), an unlisted IPC the
    nearest listed one.
    A path (an arrays file ``.../cifar10.npz`` or an ImageFolder directory) is known by its file or folder
    name, so ``/data/cifar10.npz`` gets CIFAR-10's row and its ZCA.
    """
    key = dataset_key(dataset)
    family = key if any(d == key for d, _ in table) else "cifar10"
    nearest = min((i for d, i in table if d == family), key=lambda i: abs(i - ipc))
    row = dict(table[(family, nearest)])
    zca = bool(row.pop("zca")) and family == key
    return row, zca


def method_defaults(method: str, zca: bool, buffer: dict[str, Any] | None = None,
                    distill: dict[str, Any] | None = None, eval: dict[str, Any] | None = None) -> dict[str, Any]:
    """A method's default config dict: the skeleton all four upstream repositories share (MTT's
    ``buffer.py``: 100 experts x 50 epochs, SGD lr 0.01, no momentum or weight decay, batch 256, DSA;
    ``evaluate_synset``: 5 nets x 1000 epochs, batch 256, momentum 0.9, weight decay 5e-4; 5000
    iterations from real images) updated with the method's own ``buffer``, ``distill`` and ``eval`` values."""
    return {
        "method": method,
        "data": {"zca": zca},
        "buffer": {"num_experts": 100, "epochs": 50, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
                   "batch_size": 256, "dsa": True, "optimizer": "sgd", **(buffer or {})},
        "distill": {"iterations": 5000, "pix_init": "real", **(distill or {})},
        "eval": {"num_eval": 5, "epochs": 1000, "batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4,
                 **(eval or {})},
    }


class TrajectoryList(Sequence[torch.Tensor]):
    """The experts of a store as a read-only sequence of float32 [T+1, P] trajectories, loaded lazily
    (memory-mapped) and cached, for :class:`~tad_plugin.engine.matching.TrajectoryMatcher`."""

    def __init__(self, store: TrajectoryStore, experts: Sequence[int]) -> None:
        self.store, self.experts = store, list(experts)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.experts)

    @overload
    def __getitem__(self, i: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, i: slice) -> list[torch.Tensor]: ...

    def __getitem__(self, i: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i not in self._cache:
            self._cache[i] = self.store.trajectory(self.experts[i])
        return self._cache[i]


class Pipeline:
    """Buffer, distill and evaluation stages with TAD on (``config.tad.enabled``) or off.

    Args:
        config: the run config (an adapter's ``<method>_defaults`` give its method's values).
        hooks: the hook facade; None builds one with ``TrustAwareDiversion(**config.tad.plugin_kwargs())``
            registered as ``tad`` (third-party plugins from entry points still override it).
        progress: tqdm bars (rank 0 only).
        ranks: the processes sharing the work (experts by group, distillation by minibatch slice,
            evaluation by net; :mod:`tad_plugin.engine.distributed`); None = the initialised process
            group (``torchrun``), else one process. With several, ``device="cuda"`` means ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: a ``distill`` setting this method does not implement is set.
    """

    #: the method's name (``RunConfig.method``), recorded with the experts.
    name: ClassVar[str] = "mtt"
    #: ``distill`` fields among :data:`_OPTIONAL_FIELDS` this pipeline implements.
    implements: ClassVar[frozenset[str]] = frozenset()
    #: the ``distill.pix_init`` values this pipeline implements.
    pix_inits: ClassVar[tuple[str, ...]] = ("real", "noise")
    #: ``defaults(dataset, ipc)``: the method's settings for a dataset and IPC as a nested config dict (an adapter
    #: sets its ``<method>_defaults``); what ``tad`` builds a run's config on.
    defaults: ClassVar[staticmethod[[str, int], dict[str, Any]] | None] = None

    def __init__(self, config: RunConfig, hooks: TADHooks | None = None, progress: bool = True,
                 ranks: Ranks | None = None) -> None:
        self.config = config.validate()
        d = config.distill
        for field, unused in _OPTIONAL_FIELDS.items():
            if getattr(d, field) != unused and field not in self.implements:
                raise ConfigError(f"distill.{field} = {getattr(d, field)!r} is not used by method {self.name!r}; "
                                  f"drop it (null) or choose a method that implements it (datm)")
        if d.pix_init not in self.pix_inits:
            raise ConfigError(f"distill.pix_init = {d.pix_init!r} is not implemented by method {self.name!r}; "
                              f"choose one of {', '.join(self.pix_inits)}")
        self.ranks = ranks or current()
        self.device = rank_device(config.device, self.ranks)
        self.progress = progress
        if hooks is None and config.tad.enabled:
            from ..tad import TrustAwareDiversion

            hooks = TADHooks(get_plugin_manager(default=TrustAwareDiversion(**config.tad.plugin_kwargs())))
        self.hooks = hooks
        self._pre: Preprocessor | None = None

    @property
    def tad(self) -> bool:
        return self.config.tad.enabled

    def network(self, dataset: ImageDataset) -> ConvNetConfig:
        """The ConvNet for ``dataset`` (upstream depth for its image size unless ``model.depth`` is set)."""
        m = self.config.model
        return ConvNetConfig.for_dataset(dataset, width=m.width, depth=m.depth)

    def preprocessor(self, dataset: ImageDataset, store: TrajectoryStore | None = None) -> Preprocessor:
        """The transform: the store's saved one when given (so distillation matches the experts), else
        fitted on ``dataset`` (mean/std, or ZCA with ``data.zca``), on the run's device."""
        if store is not None:
            state = store.preprocess_state()
            if state is not None:
                return Preprocessor.from_state_dict(state).to(self.device)
        if self._pre is None:
            self._pre = Preprocessor.for_dataset(dataset, zca=self.config.data.zca, device=self.device)
        return self._pre

    # ------------------------------------------------------------------ buffer
    def buffer(self, dataset: ImageDataset, labels: torch.Tensor, out: str | os.PathLike[str],
               on_epoch: EpochCallback | None = None, clean_labels: torch.Tensor | None = None) -> TrajectoryStore:
        """Train (or finish training) the experts into the trajectory store ``out``; returns it.

        The optimiser is ``buffer.optimizer`` (SGD, or GSAM for FTD/DATM). With TAD and
        ``tad.inner_loop`` the dual loop (:meth:`dual_loop`) gives the recalibrations their features and anchors,
        and its trust report of expert 0 is written to ``out/trust_report.json`` after every round (and ``.png``
        at the end when matplotlib is there); a resumed store whose expert 0 is finished keeps its report.

        Args:
            dataset: the images (and the clean test set for logging).
            labels: int64 [N] training labels to use (the noisy ones).
            out: store directory; experts already in it are kept (resume).
            on_epoch: an epoch callback replacing the dual loop's recalibrations (None = the dual loop when
                configured).
            clean_labels: int64 [N], the true labels when known (synthetic noise, CIFAR-N): the trust
                report then has precision / recall / label accuracy.
        """
        cfg = self.config
        net = self.network(dataset)
        pre = self.preprocessor(dataset)
        store = TrajectoryStore.create(out, **self._store_settings(dataset, labels), preprocess_state=pre.state_dict())
        assert store is not None  # None only for a dry run
        loop = None
        if on_epoch is None and self.tad and cfg.tad.inner_loop and len(store.finished()) < cfg.buffer.num_experts:
            loop = self.dual_loop(dataset, labels, clean_labels,
                                  store.root / "trust_report.json" if self.ranks.is_main else None)
        trainer = ExpertTrainer(net, pre, cfg.buffer, cfg.tad, hooks=self.hooks, device=self.device,
                                on_epoch=on_epoch, progress=self.progress, ranks=self.ranks, dual_loop=loop)
        trainer.train(store, dataset.train_images, labels, dataset.test_images, dataset.test_labels,
                      seed=cfg.seed)
        del trainer
        if self.device.type == "cuda":  # the expert groups' cached blocks go back to the driver:
            torch.cuda.empty_cache()     # other runs sharing the GPU can use them during distillation
        report = store.root / "trust_report.json"
        if loop is not None and self.ranks.is_main and report.is_file():  # expert 0's, of this call or an earlier
            try:  # the JSON was rewritten after every round; the plot once, at the end
                TrustReport.load_json(report).plot(report.with_suffix(".png"), title=f"Trust report: {dataset.name}")
            except ImportError:
                pass  # matplotlib is optional; the JSON holds the same numbers
        return store

    def _store_settings(self, dataset: ImageDataset, labels: torch.Tensor) -> dict[str, Any]:
        """:meth:`TrajectoryStore.create`'s arguments that a resumed store must match: the network's shapes,
        the epochs, the data and labels, and the training settings other than the count and the speed ones."""
        cfg = self.config
        meta: dict[str, Any] = {
            "buffer": to_dict(cfg.buffer), "tad": to_dict(cfg.tad) if self.tad else None, "model": to_dict(cfg.model),
            "dataset": dataset.name, "zca": cfg.data.zca, "seed": cfg.seed, "labels": labels_fingerprint(labels),
            "method": self.name}
        meta["buffer"].pop("num_experts")  # more experts may be added to a store later
        for key in ("experts_per_group", "eval_batch_size", "compile", "channels_last", "cache_inputs"):
            meta["buffer"].pop(key)  # speed settings do not change what is trained
        return {"param_shapes": self.network(dataset).param_shapes, "epochs": cfg.buffer.epochs,
                "num_train": len(labels), "num_classes": dataset.num_classes, "meta": meta}

    # ------------------------------------------------------------------ checks before a run
    def check_data(self, dataset: ImageDataset, labels: torch.Tensor, buffer: bool = True) -> None:
        """Refuse, before anything is trained or written, data this run cannot distil: fewer than two classes,
        ``labels`` outside the dataset's classes, a class with fewer training labels than the initial images
        (``distill.ipc``, unless ``pix_init = "noise"``) or TAD's anchors (``tad.anchor_ipc``) take from it, and
        a TAD run's missing or unreadable feature extractor.

        Args:
            labels: int64 [N], the training labels the run uses (the noisy ones).
            buffer: whether experts are trained (the anchors and the extractor are checked only then).

        Raises:
            ConfigError: the message names the problem and the fix.
            ValueError / TypeError: ``labels`` is not int64 [N] with values in [0, C) (:func:`check_labels`).
            tad_plugin.features.ExtractorFileError: the extractor file is missing or unreadable.
        """
        cfg, n = self.config, dataset.num_classes
        if n < 2:
            raise ConfigError(f"{dataset.name} has {n} class; distillation makes images that tell classes apart and "
                              f"needs at least two: check the dataset's labels (or its class folders)")
        check_labels(labels, n, "the training labels", n=len(dataset.train_labels))
        counts = torch.bincount(labels, minlength=n)
        needs = []
        if cfg.distill.pix_init != "noise":
            needs.append((cfg.distill.ipc, "distill.ipc", "lower distill.ipc or set distill.pix_init=noise"))
        if buffer and self.tad and cfg.tad.inner_loop:
            needs.append((cfg.tad.anchor_ipc, "tad.anchor_ipc", "lower tad.anchor_ipc (>= 2)"))
        for need, key, fix in needs:
            short = [f"{dataset.class_names[c]!r} {int(counts[c])}" for c in range(n) if counts[c] < need]
            if short:
                listed = ", ".join(short[:10]) + (" ..." if len(short) > 10 else "")
                raise ConfigError(f"{key} = {need} real images per class are drawn from the training set, but "
                                  f"class(es) {listed} hold fewer labels: {fix}")
        if buffer and self.tad and cfg.tad.inner_loop and cfg.tad.features != "pixels" and cfg.tad.features_wait_s <= 0:
            from ..features import default_extractor_path, load_extractor

            choice = cfg.tad.features
            load_extractor(default_extractor_path(cfg.data.dataset) if choice is None else choice,
                           dataset=cfg.data.dataset)

    def check_resume(self, dataset: ImageDataset, labels: torch.Tensor, out: str | os.PathLike[str],
                     buffer: bool = True, distill: bool = True) -> None:
        """Refuse before a run starts what :meth:`buffer` and :meth:`distill` would refuse later about the
        run folder ``out``: a store ``out/buffer`` made with other settings (``buffer``), a distillation
        checkpoint ``out/distill_checkpoint.pt`` of another run (``distill``). Reads only.

        Raises:
            TrajectoryError / ValueError: the message says which file and the fix.
        """
        out = Path(out)
        if buffer:
            self.check_store(dataset, labels, out / "buffer")
        path = out / "distill_checkpoint.pt"
        if distill and path.is_file():
            d = self.config.distill
            shape = (dataset.num_classes * d.ipc, dataset.channels, *dataset.image_size)
            check_checkpoint(path, read_checkpoint(path), self.matching_config(), shape)

    def check_store(self, dataset: ImageDataset, labels: torch.Tensor, store: str | os.PathLike[str]) -> None:
        """Refuse before any training what :meth:`buffer` would refuse later: a trajectory store at ``store``
        made with other settings or labels than this pipeline's on ``dataset`` and ``labels``. Reads only.

        Raises:
            TrajectoryError: the message names the differing settings and the fix.
        """
        TrajectoryStore.create(store, **self._store_settings(dataset, labels), dry_run=True)

    def features(self, dataset: ImageDataset,
                 wait_s: float = 0.0) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The inner loop's embedding: ``(features [N, D] of the training images, embed)`` where
        ``embed`` maps [0, 1] images to features (``tad.features``: None = the trained extractor of this
        dataset at its default path, a path, or ``"pixels"``); ``wait_s``: seconds to wait for a missing
        extractor file (0 = none).

        Raises:
            tad_plugin.features.ExtractorFileError: no extractor file; the message says how to train one.
        """
        choice = self.config.tad.features
        if choice == "pixels":
            def embed(x: torch.Tensor) -> torch.Tensor:
                return x.flatten(1).float()
            return embed(dataset.train_images.to(self.device) / 255.0), embed
        from ..features import default_extractor_path, load_extractor

        path = default_extractor_path(self.config.data.dataset) if choice is None else choice
        extractor = load_extractor(path, device=self.device, dataset=self.config.data.dataset, wait_s=wait_s)
        return extractor.embed(dataset.train_images.to(self.device)), extractor.embed

    def matching_config(self, **overrides: Any) -> MatchingConfig:
        """The engine's :class:`MatchingConfig` from the ``distill`` section (and the buffer's DSA
        strategy and the run seed), with ``overrides`` applied."""
        cfg, d = self.config, self.config.distill
        # every setting the two share by name comes from the distill section: one declaration per setting
        values = {f.name: getattr(d, f.name) for f in dataclasses.fields(MatchingConfig) if hasattr(d, f.name)}
        values.update(dsa_strategy=cfg.buffer.dsa_strategy if d.dsa else "", log_every=min(10, d.iterations),
                      seed=cfg.seed)
        return MatchingConfig(**{**values, **overrides})

    def dual_loop(self, dataset: ImageDataset, labels: torch.Tensor, clean_labels: torch.Tensor | None = None,
                  report_path: str | os.PathLike[str] | None = None) -> DualLoop:
        """TAD's inner loop for this run's settings (anchors distilled with this run's distillation lrs,
        plain MTT matching: hard labels, the whole early window, no EMA, no gate); ``report_path``: the
        trust report's JSON (expert 0's), rewritten after every round (None = in memory only)."""
        cfg, t = self.config, self.config.tad
        features: torch.Tensor | Callable[[], tuple[torch.Tensor, Embedder]]
        embed: Embedder | None
        if t.features_wait_s > 0 and t.features != "pixels":  # loaded when the inner loop first needs it
            features, embed = (lambda: self.features(dataset, wait_s=t.features_wait_s)), None
        else:
            features, embed = self.features(dataset)
        # The early trajectory: start epoch 0 or 1, target 2 epochs later (the paper's "first four epochs").
        anchors = self.matching_config(iterations=t.anchor_iterations, expert_epochs=2, max_start_epoch=2,
                                       min_start_epoch=0, batch_syn=None, lr_labels=None, loss_gate=None,
                                       ema_decay=None, adaptive_length=False, eval_every=0, checkpoint_every=0,
                                       log_every=min(50, t.anchor_iterations))
        loop_cfg = DualLoopConfig(anchor_ipc=t.anchor_ipc, anchor_matching=anchors)
        assert self.hooks is not None
        return DualLoop(self.network(dataset), self.preprocessor(dataset), dataset.train_images, features, embed,
                        self.hooks, loop_cfg, noisy_labels=labels, clean_labels=clean_labels, device=self.device,
                        seed=cfg.seed, report_path=report_path, report_expert=0)

    # ------------------------------------------------------------------ distill
    def init_pool(self, store: TrajectoryStore, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where real initial images come from: ``(pool indices int64 [n], labels int64 [N])``.

        TAD: samples trusted by at least ``distill.init_consensus`` of the experts (default half) at their
        last epoch, with the experts' (possibly recalibrated) labels. Without TAD (or a store without trust
        records): everything, with ``labels``.
        """
        trust = store.final_trust() if self.tad else None
        if trust is None:
            return torch.arange(len(labels)), labels
        votes, final_labels = trust
        return torch.nonzero(votes >= self.config.distill.init_consensus).flatten(), final_labels

    def initial_images(self, store: TrajectoryStore, experts: Sequence[int], dataset: ImageDataset,
                       labels: torch.Tensor, preprocess: Preprocessor, generator: torch.Generator) -> torch.Tensor:
        """The synthetic images before distillation, float [C * ipc, ...] class-major, model-input space:
        real samples of each class from :meth:`init_pool` (``pix_init="real"``) or Gaussian noise."""
        d = self.config.distill
        if d.pix_init == "real":
            pool, pool_labels = self.init_pool(store, labels)
            idx = real_init_indices(pool_labels, pool, d.ipc, dataset.num_classes, generator=generator)
            return preprocess(dataset.train_images[idx].to(self.device))
        c, (h, w) = dataset.channels, dataset.image_size
        return torch.randn(dataset.num_classes * d.ipc, c, h, w, generator=generator).to(self.device)

    def initial_labels(self, store: TrajectoryStore, experts: Sequence[int], dataset: ImageDataset,
                       images: torch.Tensor) -> torch.Tensor:
        """The synthetic labels: hard class labels int64 [C * ipc] (class-major, as the images)."""
        return class_labels(dataset.num_classes, self.config.distill.ipc)

    def make_matcher(self, net: ConvNetConfig, config: MatchingConfig, trajectories: Sequence[torch.Tensor],
                     images: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> TrajectoryMatcher:
        """The distillation loop (``kwargs`` as :class:`TrajectoryMatcher`'s keyword arguments)."""
        return TrajectoryMatcher(net, config, trajectories, images, labels, **kwargs)

    def distill(self, store: TrajectoryStore, dataset: ImageDataset, labels: torch.Tensor | None = None,
                checkpoint: str | os.PathLike[str] | None = None, evaluator: Evaluator | None = None
                ) -> DistillResult:
        """Distill ``distill.ipc`` images per class from the experts in ``store``.

        Args:
            labels: int64 [N], the training labels the experts were given (for the real initialisation);
                None = the store's first recorded labels of expert 0.
            checkpoint: resumable checkpoint path (None = none).
            evaluator: evaluates during distillation every ``distill.eval_every`` iterations (and at the
                end); None = the standard :meth:`evaluator` when ``distill.eval_every`` > 0, else no
                evaluation here (call :meth:`evaluate` afterwards).
        """
        cfg, d = self.config, self.config.distill
        net = self.network(dataset)
        pre = self.preprocessor(dataset, store)
        experts = store.finished()
        if d.num_experts is not None:
            experts = experts[:d.num_experts]
        if not experts:
            raise ValueError(f"{store.root} holds no finished experts; run the buffer stage first")
        if labels is None:
            labels = store.load_expert(experts[0]).labels[0]
        gen = torch.Generator().manual_seed(cfg.seed)
        images = self.initial_images(store, experts, dataset, labels, pre, gen)
        syn_labels = self.initial_labels(store, experts, dataset, images)
        if self.ranks.active:  # all start from rank 0's set (an expert-based choice could round otherwise)
            images, syn_labels = (t.to(self.device) for t in self.ranks.broadcast((images.cpu(), syn_labels.cpu())))
        if evaluator is None and d.eval_every > 0:
            evaluator = self.evaluator(dataset, pre)
        mcfg = self.matching_config(eval_every=d.eval_every if evaluator is not None else 0)
        matcher = self.make_matcher(net, mcfg, TrajectoryList(store, experts), images, syn_labels,
                                    evaluator=evaluator, checkpoint=checkpoint, device=self.device,
                                    progress=self.progress, ranks=self.ranks)
        return matcher.run()

    # ------------------------------------------------------------------ evaluate
    def evaluator(self, dataset: ImageDataset, preprocess: Preprocessor | None = None) -> Evaluator:
        """The standard evaluation on ``dataset``'s clean test set (``eval`` section settings)."""
        e, cfg = self.config.eval, self.config
        pre = preprocess or self.preprocessor(dataset)
        test_x = pre(dataset.test_images.to(self.device))
        return Evaluator(self.network(dataset), test_x, dataset.test_labels.to(self.device), num_nets=e.num_eval,
                         epochs=e.epochs, batch_size=e.batch_size, momentum=e.momentum,
                         weight_decay=e.weight_decay, dsa_strategy=cfg.buffer.dsa_strategy if e.dsa else "",
                         seed=cfg.seed, device=self.device, compile=e.compile, progress=self.progress,
                         ranks=self.ranks)

    def evaluate(self, result: DistillResult, dataset: ImageDataset,
                 preprocess: Preprocessor | None = None) -> EvalResult:
        """Train ``eval.num_eval`` fresh nets on the distilled set (lr = ``eval.lr`` or the learned
        ``syn_lr``; soft labels train with the soft cross-entropy) and return their clean test accuracies."""
        lr = self.config.eval.lr if self.config.eval.lr is not None else result.syn_lr
        return self.evaluator(dataset, preprocess)(result.images.to(self.device), result.labels.to(self.device), lr)


def save_distilled(result: DistillResult, path: str | os.PathLike[str], preprocess: Preprocessor,
                   settings: dict[str, Any] | None = None) -> Path:
    """Write a distilled set (images, labels, syn_lr, the EMA images if any, the best evaluation's set if
    any, the distillation's seconds, the transform, the ``settings`` it was made with) atomically, loadable
    with ``weights_only=True``."""
    payload = {"images": result.images.cpu(), "labels": result.labels.cpu(), "syn_lr": float(result.syn_lr),
               "ema_images": None if result.ema_images is None else result.ema_images.cpu(),
               "preprocess": preprocess.state_dict(), "best": result.best, "best_set": result.best_set,
               "history": result.history, "seconds": float(result.seconds), "settings": settings}
    atomic_torch_save(payload, path)
    return Path(path)


def load_distilled(path: str | os.PathLike[str]) -> tuple[DistillResult, Preprocessor]:
    """Read :func:`save_distilled`'s file. Raises ``ValueError`` with the fix if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no distilled set at {path}; run `tad distill` first (or pass --synthetic FILE)")
    try:
        p = torch_load(path, verify=True)
        result = DistillResult(p["images"], p["labels"], float(p["syn_lr"]), ema_images=p.get("ema_images"),
                               history=list(p["history"]), best=p["best"], best_set=p.get("best_set"),
                               seconds=float(p.get("seconds", 0.0)), settings=p.get("settings"))
        return result, Preprocessor.from_state_dict(p["preprocess"])
    except KeyError as exc:
        raise ValueError(f"{path} is not a distilled set (no entry {exc}); give a file `tad distill` wrote, or re-run "
                         f"`tad distill`") from exc
    except Exception as exc:
        raise ValueError(f"cannot read distilled set {path}: {exc}; delete it and distil again (`tad distill` or "
                         f"`tad run` with its --out)") from exc


def labels_fingerprint(labels: torch.Tensor) -> str:
    """A short hash of a label vector (stored with the experts, so a resumed buffer uses the same labels)."""
    return hashlib.sha1(labels.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]
