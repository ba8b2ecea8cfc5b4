"""MTT (Cazenavette et al., 2022) with Trust-Aware Diversion switchable on and off.

MTT's two scripts on the shared engine; this module holds only what is MTT-specific: its
hyper-parameter table and the order of its stages.

* ``buffer``  (upstream ``buffer.py``): experts trained with plain SGD (lr 0.01, no momentum, no weight
  decay, batch 256, DSA, 50 epochs, constant lr). With TAD the training set is the trusted space of
  each expert (outer loop, after a warm-up) and the criterion is ``expert_loss`` (CE + lambda*RCE);
  without TAD it is the noisy baseline (all samples, CE).
* ``distill`` (upstream ``distill.py``): trajectory matching; images initialised from real samples of
  each class (``pix_init="real"``). With TAD the candidates are the trusted space the experts ended
  with (samples trusted by at least half of them, with their current labels) -- otherwise a
  mislabelled image would start in the wrong class.
* ``evaluate``: fresh ConvNets trained on the distilled set, tested on the clean test set.

Example::

    from tad_plugin.adapters.mtt import MTT, mtt_defaults
    from tad_plugin.engine.config import build_config

    cfg = build_config(mtt_defaults("cifar10", ipc=10), sets=["data.dataset=cifar10", "tad.enabled=true"])
    mtt = MTT(cfg)
    store = mtt.buffer(dataset, noisy_labels, "runs/c10/buffer")
    result = mtt.distill(store, dataset)
    print(mtt.evaluate(result, dataset).mean)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import ImageDataset
from ..engine.config import RunConfig, to_dict
from ..engine.convnet import ConvNetConfig
from ..engine.dual_loop import DualLoop, DualLoopConfig
from ..engine.evaluate import EvalResult, Evaluator
from ..engine.experts import EpochCallback, ExpertTrainer
from ..engine.matching import DistillResult, MatchingConfig, TrajectoryMatcher, class_labels, real_init_indices
from ..engine.preprocess import Preprocessor
from ..engine.trajectories import TrajectoryStore
from ..manager import TADHooks, get_plugin_manager

__all__ = ["MTT", "MTT_TABLE", "mtt_defaults", "TrajectoryList", "save_distilled", "load_distilled",
           "labels_fingerprint"]

#: MTT's per-setting hyper-parameters (dc_benchmark's table "provided by the author"; upstream.md 2.4).
#: ``batch_syn`` None = all synthetic images per inner step.
MTT_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): dict(syn_steps=50, expert_epochs=2, max_start_epoch=2, lr_img=100.0, lr_lr=1e-7,
                         lr_teacher=0.01, batch_syn=None, zca=True),
    ("cifar10", 10): dict(syn_steps=30, expert_epochs=2, max_start_epoch=20, lr_img=100.0, lr_lr=1e-5,
                          lr_teacher=0.001, batch_syn=None, zca=True),
    ("cifar10", 50): dict(syn_steps=30, expert_epochs=2, max_start_epoch=40, lr_img=1000.0, lr_lr=1e-5,
                          lr_teacher=0.001, batch_syn=None, zca=False),
    ("cifar100", 1): dict(syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_img=1000.0, lr_lr=1e-5,
                          lr_teacher=0.01, batch_syn=None, zca=True),
    ("cifar100", 10): dict(syn_steps=20, expert_epochs=2, max_start_epoch=20, lr_img=1000.0, lr_lr=1e-5,
                           lr_teacher=0.01, batch_syn=None, zca=False),
    ("cifar100", 50): dict(syn_steps=80, expert_epochs=2, max_start_epoch=40, lr_img=1000.0, lr_lr=1e-5,
                           lr_teacher=0.01, batch_syn=125, zca=True),
}


def _dataset_key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


def mtt_defaults(dataset: str, ipc: int) -> dict[str, Any]:
    """MTT's settings for ``dataset`` (``"cifar10"``, ``"cifar100"``, else generic) at ``ipc``, as a
    nested config dict for :func:`tad_plugin.engine.config.build_config`.

    Buffer: 100 experts x 50 epochs, SGD lr 0.01, no momentum/weight decay, batch 256, DSA.
    Distill: the :data:`MTT_TABLE` row (an unlisted dataset/IPC gets the nearest CIFAR-10 row),
    5000 iterations, real initialisation. Evaluation: 5 nets x 1000 epochs, batch 256.
    """
    key = _dataset_key(dataset)
    family = key if key in ("cifar10", "cifar100") else "cifar10"
    rows = sorted(i for d, i in MTT_TABLE if d == family)
    nearest = min(rows, key=lambda i: abs(i - ipc))
    row = dict(MTT_TABLE[(family, nearest)])
    zca = row.pop("zca") and key in ("cifar10", "cifar100")
    return {
        "data": {"zca": zca},
        "buffer": {"num_experts": 100, "epochs": 50, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
                   "batch_size": 256, "dsa": True},
        "distill": {"ipc": ipc, "iterations": 5000, "pix_init": "real", **row},
        "eval": {"num_eval": 5, "epochs": 1000, "batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4},
    }


class TrajectoryList(Sequence[torch.Tensor]):
    """The experts of a store as a read-only sequence of float32 [T+1, P] trajectories, loaded lazily
    (memory-mapped) and cached, for :class:`~tad_plugin.engine.matching.TrajectoryMatcher`."""

    def __init__(self, store: TrajectoryStore, experts: Sequence[int]) -> None:
        self.store, self.experts = store, list(experts)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.experts)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i not in self._cache:
            self._cache[i] = self.store.trajectory(self.experts[i])
        return self._cache[i]


class MTT:
    """MTT's buffer, distill and evaluation stages with TAD on (``config.tad.enabled``) or off.

    Args:
        config: the run config (see :func:`mtt_defaults` for MTT's values).
        hooks: the hook facade; None builds one with ``TrustAwareDiversion(**config.tad.plugin_kwargs())``
            registered as ``tad`` (third-party plugins from entry points still override it).
        progress: tqdm bars.
    """

    def __init__(self, config: RunConfig, hooks: TADHooks | None = None, progress: bool = True) -> None:
        self.config = config.validate()
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
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

        With TAD and ``tad.inner_loop`` the dual loop (:meth:`dual_loop`) is the epoch callback, and its
        trust report is written to ``out/trust_report.json`` (and ``.png`` when matplotlib is there).

        Args:
            dataset: the images (and the clean test set for logging).
            labels: int64 [N] training labels to use (the noisy ones).
            out: store directory; experts already in it are kept (resume).
            on_epoch: an epoch callback replacing the dual loop (None = the dual loop when configured).
            clean_labels: int64 [N], the true labels when known (synthetic noise, CIFAR-N): the trust
                report then has precision / recall / label accuracy.
        """
        cfg = self.config
        net = self.network(dataset)
        pre = self.preprocessor(dataset)
        meta = {"buffer": to_dict(cfg.buffer), "tad": to_dict(cfg.tad) if self.tad else None,
                "model": to_dict(cfg.model), "dataset": dataset.name, "zca": cfg.data.zca, "seed": cfg.seed,
                "labels": labels_fingerprint(labels), "method": "mtt"}
        meta["buffer"].pop("num_experts")  # more experts may be added to a store later
        for key in ("experts_per_group", "eval_batch_size", "compile", "channels_last"):
            meta["buffer"].pop(key)  # speed settings do not change what is trained
        store = TrajectoryStore.create(out, param_shapes=net.param_shapes, epochs=cfg.buffer.epochs,
                                       num_train=len(labels), num_classes=dataset.num_classes, meta=meta,
                                       preprocess_state=pre.state_dict())
        loop = None
        if on_epoch is None and self.tad and cfg.tad.inner_loop and len(store.finished()) < cfg.buffer.num_experts:
            loop = on_epoch = self.dual_loop(dataset, labels, clean_labels)
        trainer = ExpertTrainer(net, pre, cfg.buffer, cfg.tad, hooks=self.hooks, device=self.device,
                                on_epoch=on_epoch, progress=self.progress)
        trainer.train(store, dataset.train_images, labels, dataset.test_images, dataset.test_labels,
                      seed=cfg.seed)
        if loop is not None and loop.report.rounds:
            loop.report.save_json(store.root / "trust_report.json")
            try:
                loop.report.plot(store.root / "trust_report.png", title=f"Trust report: {dataset.name}")
            except ImportError:
                pass  # matplotlib is optional; the JSON holds the same numbers
        return store

    def features(self, dataset: ImageDataset) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The inner loop's embedding: ``(features [N, D] of the training images, embed)`` where
        ``embed`` maps [0, 1] images to features (``tad.features``: None = the trained extractor of this
        dataset at its default path, a path, or ``"pixels"``).

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
        extractor = load_extractor(path, device=self.device)
        return extractor.embed(dataset.train_images.to(self.device)), extractor.embed

    def matching_config(self, **overrides: Any) -> MatchingConfig:
        """The engine's :class:`MatchingConfig` from the ``distill`` section (and the buffer's DSA
        strategy and the run seed), with ``overrides`` applied."""
        cfg, d = self.config, self.config.distill
        values = dict(iterations=d.iterations, syn_steps=d.syn_steps, expert_epochs=d.expert_epochs,
                      max_start_epoch=d.max_start_epoch, batch_syn=d.batch_syn, lr_img=d.lr_img, lr_lr=d.lr_lr,
                      lr_teacher=d.lr_teacher, dsa_strategy=cfg.buffer.dsa_strategy if d.dsa else "",
                      eval_every=d.eval_every, checkpoint_every=d.checkpoint_every,
                      log_every=min(10, d.iterations), seed=cfg.seed)
        return MatchingConfig(**{**values, **overrides})

    def dual_loop(self, dataset: ImageDataset, labels: torch.Tensor,
                  clean_labels: torch.Tensor | None = None) -> DualLoop:
        """TAD's inner loop for this run's settings (anchors distilled with this run's distillation lrs)."""
        cfg, t = self.config, self.config.tad
        features, embed = self.features(dataset)
        # The early trajectory: start epoch 0 or 1, target 2 epochs later (the paper's "first four epochs").
        anchors = self.matching_config(iterations=t.anchor_iterations, expert_epochs=2, max_start_epoch=2,
                                       batch_syn=None, eval_every=0, checkpoint_every=0,
                                       log_every=min(50, t.anchor_iterations))
        loop_cfg = DualLoopConfig(anchor_epoch=t.anchor_epoch, anchor_ipc=t.anchor_ipc,
                                  recalibrate_every=t.recalibrate_every, anchor_matching=anchors)
        assert self.hooks is not None
        return DualLoop(self.network(dataset), self.preprocessor(dataset), dataset.train_images, features, embed,
                        self.hooks, loop_cfg, noisy_labels=labels, clean_labels=clean_labels, device=self.device,
                        seed=cfg.seed)

    # ------------------------------------------------------------------ distill
    def init_pool(self, store: TrajectoryStore, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where real initial images come from: ``(pool indices int64 [n], labels int64 [N])``.

        TAD: samples trusted by at least half of the experts at their last epoch, with the experts'
        (possibly recalibrated) labels. Without TAD (or a store without trust records): everything,
        with ``labels``.
        """
        trust = store.final_trust() if self.tad else None
        if trust is None:
            return torch.arange(len(labels)), labels
        votes, final_labels = trust
        return torch.nonzero(votes >= 0.5).flatten(), final_labels

    def distill(self, store: TrajectoryStore, dataset: ImageDataset, labels: torch.Tensor | None = None,
                checkpoint: str | os.PathLike[str] | None = None, evaluator: Evaluator | None = None
                ) -> DistillResult:
        """Distill ``distill.ipc`` images per class from the experts in ``store``.

        Args:
            labels: int64 [N], the training labels the experts were given (for the real initialisation);
                None = the store's first recorded labels of expert 0.
            checkpoint: resumable checkpoint path (None = none).
            evaluator: evaluates during distillation every ``distill.eval_every`` iterations (and at the
                end); None = no evaluation here (call :meth:`evaluate` afterwards).
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
        syn_labels = class_labels(dataset.num_classes, d.ipc)
        if d.pix_init == "real":
            pool, pool_labels = self.init_pool(store, labels)
            idx = real_init_indices(pool_labels, pool, d.ipc, dataset.num_classes, generator=gen)
            images = pre(dataset.train_images[idx].to(self.device))
        else:
            c, (h, w) = dataset.channels, dataset.image_size
            images = torch.randn(len(syn_labels), c, h, w, generator=gen).to(self.device)
        mcfg = self.matching_config(eval_every=d.eval_every if evaluator is not None else 0)
        matcher = TrajectoryMatcher(net, mcfg, TrajectoryList(store, experts), images, syn_labels,
                                    evaluator=evaluator, checkpoint=checkpoint, device=self.device,
                                    progress=self.progress)
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
                         seed=cfg.seed, device=self.device, progress=self.progress)

    def evaluate(self, result: DistillResult, dataset: ImageDataset,
                 preprocess: Preprocessor | None = None) -> EvalResult:
        """Train ``eval.num_eval`` fresh nets on the distilled set (lr = ``eval.lr`` or the learned
        ``syn_lr``) and return their clean test accuracies."""
        lr = self.config.eval.lr if self.config.eval.lr is not None else result.syn_lr
        return self.evaluator(dataset, preprocess)(result.images.to(self.device), result.labels.to(self.device), lr)


def save_distilled(result: DistillResult, path: str | os.PathLike[str], preprocess: Preprocessor,
                   settings: dict[str, Any] | None = None) -> Path:
    """Write a distilled set (images, labels, syn_lr, the transform, the ``settings`` it was made with)
    atomically, loadable with ``weights_only=True``."""
    from ..files import atomic_torch_save

    payload = {"images": result.images.cpu(), "labels": result.labels.cpu(), "syn_lr": float(result.syn_lr),
               "preprocess": preprocess.state_dict(), "best": result.best, "history": result.history,
               "settings": settings}
    atomic_torch_save(payload, path)
    return Path(path)


def load_distilled(path: str | os.PathLike[str]) -> tuple[DistillResult, Preprocessor]:
    """Read :func:`save_distilled`'s file. Raises ``ValueError`` with the fix if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no distilled set at {path}; run `tad distill` first (or pass --synthetic FILE)")
    try:
        p = torch.load(path, map_location="cpu", weights_only=True)
        result = DistillResult(p["images"], p["labels"], float(p["syn_lr"]), history=list(p["history"]),
                               best=p["best"])
        return result, Preprocessor.from_state_dict(p["preprocess"])
    except Exception as exc:
        raise ValueError(f"cannot read distilled set {path}: {exc}; re-run `tad distill`") from exc



def labels_fingerprint(labels: torch.Tensor) -> str:
    """A short hash of a label vector (stored with the experts, so a resumed buffer uses the same labels)."""
    return hashlib.sha1(labels.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]
