"""The engine's side of TAD's inner loop: the samples' features and the anchors distilled from the early trajectory.

The schedule (when to divide, when to recalibrate, ``recall_once``) is :class:`tad_plugin.trust_loop.TrustLoop`'s;
the engine's :class:`~tad_plugin.engine.experts.ExpertTrainer` runs one per group of experts and asks a
:class:`DualLoop` for what only the engine has:

1. **Features**: fixed self-supervised features of the training samples (loaded on first use when given as a
   function, so the extractor may still be in training when the experts start).
2. **Anchors**: at the first recalibration of a group (from ``tad.anchor_epoch`` on), ``anchor_ipc`` images per
   class are distilled by matching only the early trajectory of the group's experts (snapshots 0 ..
   ``anchor_epoch``), initialised from the trusted space with the current labels, mapped back to [0, 1] pixels
   (inverse ZCA / normalisation) and embedded with the extractor -- once per group, because the early trajectory
   they match does not change afterwards.

Its :class:`~tad_plugin.trust_report.TrustReportListener` (``DualLoop.report``) records every division and
recalibration of one expert (``report_expert``; with precision / recall when clean labels are given), while the
trainer runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..manager import TADHooks
from ..trust_loop import TrustLoop, admit_once
from ..trust_report import TrustReport, TrustReportListener
from .convnet import ConvNetConfig
from .matching import DistillDivergedError, MatchingConfig, TrajectoryMatcher, class_labels, real_init_indices
from .preprocess import Preprocessor

__all__ = ["DualLoop", "DualLoopConfig", "Embedder", "admit_once", "distill_anchors"]  # admit_once: trust_loop's

#: ``embed(images)``: float images in [0, 1] [M, C, H, W] -> features [M, D] (e.g. FeatureExtractor.embed).
Embedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DualLoopConfig:
    """How the engine's anchors are made (when they are made is ``tad.anchor_epoch``, the trust loop's schedule).

    Attributes:
        anchor_ipc: anchors per class (n in the paper; >= 2 so a class covariance exists).
        anchor_matching: the distillation settings for the anchors (few iterations suffice: the
            anchors only need to sit near their class's early-trajectory "prototype"); the anchors match
            snapshots up to ``max_start_epoch - 1 + expert_epochs``, which must not pass ``tad.anchor_epoch``.
    """

    anchor_ipc: int = 10
    anchor_matching: MatchingConfig = dataclasses.field(default_factory=lambda: MatchingConfig(
        iterations=200, syn_steps=20, expert_epochs=2, max_start_epoch=2, lr_img=100.0, lr_lr=1e-5,
        lr_teacher=0.01, eval_every=0, checkpoint_every=0, log_every=50))

    def __post_init__(self) -> None:
        if self.anchor_ipc < 2:
            raise ValueError(f"anchor_ipc must be >= 2 (a class covariance needs two anchors), got {self.anchor_ipc}")


class DualLoop:
    """The engine's features and anchors for the trust loop's recalibrations (see the module docstring).

    Args:
        net: the experts' ConvNet.
        preprocess: the experts' input transform (anchors are distilled in its space and mapped back
            with ``preprocess.to_unit`` before embedding).
        train_images: uint8 [N, C, H, W], the training images (for the anchors' real initialisation).
        features: float [N, D], self-supervised features of the training images (fixed); or a function
            without arguments returning ``(features, embed)``, called once, when the inner loop first needs
            them (anchors after ``anchor_epoch`` epochs), so that the extractor may still be in training
            when the experts start.
        embed: maps [0, 1] images to features, the same extractor that made ``features``; None when
            ``features`` is such a function.
        hooks: the hook facade the trainer calls (the report listens on it while the trainer runs).
        config: how the anchors are made.
        noisy_labels: int64 [N], the labels the run started from (for the report).
        clean_labels: int64 [N] or None; with them the report has precision / recall.
        device: where anchors are distilled and features kept (the recalibration runs there).
        seed: seeds the anchors' initialisation and distillation.
        report_path: where the trust report is rewritten (atomically) after every round it records, so
            a run stopped mid-buffer keeps it; None = kept in memory only (``DualLoop.report``).
        report_expert: the expert the report follows; None = the first one the trainer notifies. The pipeline
            follows expert 0, so that a resumed buffer keeps the report written before the interruption instead
            of replacing it with the next unfinished expert's.
    """

    def __init__(self, net: ConvNetConfig, preprocess: Preprocessor, train_images: torch.Tensor,
                 features: torch.Tensor | Callable[[], tuple[torch.Tensor, Embedder]], embed: Embedder | None,
                 hooks: TADHooks, config: DualLoopConfig | None = None,
                 *, noisy_labels: torch.Tensor, clean_labels: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, progress: bool = False,
                 report_path: str | os.PathLike[str] | None = None, report_expert: int | None = None) -> None:
        self.net, self.preprocess, self.hooks = net, preprocess, hooks
        self.config = config or DualLoopConfig()
        self.device = torch.device(device)
        self.train_images = train_images
        self._load_features = features if callable(features) else None
        self._features: torch.Tensor | None = None
        self._embed = embed
        if self._load_features is None:
            assert isinstance(features, torch.Tensor)
            self._set_features(features, embed)
        self.noisy_labels, self.clean_labels = noisy_labels, clean_labels
        self.seed, self.progress = seed, progress
        self.listener = TrustReportListener(noisy_labels, clean_labels, expert=report_expert, path=report_path)
        self._group: tuple[int, ...] | None = None
        self._anchors: tuple[torch.Tensor, torch.Tensor] | None = None

    def _set_features(self, features: torch.Tensor, embed: Embedder | None) -> None:
        if features.dim() != 2 or features.shape[0] != self.train_images.shape[0]:
            raise ValueError(f"features must be [N={self.train_images.shape[0]}, D], got {tuple(features.shape)}")
        if embed is None:
            raise ValueError("embed is None: pass the extractor's embed with the features")
        self._features, self._embed = features.to(self.device), embed

    @property
    def report(self) -> TrustReport:
        """The trust report of the followed expert (filled while the trainer runs; empty when it was finished
        before)."""
        return self.listener.report

    @property
    def features_loaded(self) -> bool:
        """Whether :attr:`features` are at hand (given, or loaded by an earlier use)."""
        return self._features is not None

    @property
    def features(self) -> torch.Tensor:
        """float [N, D] on ``device``: the samples' features (loaded on first use when given as a function)."""
        if self._features is None:
            assert self._load_features is not None
            self._set_features(*self._load_features())
        assert self._features is not None
        return self._features

    @property
    def embed(self) -> Embedder:
        """The extractor's embedding of [0, 1] images (loaded with :attr:`features`)."""
        self.features  # noqa: B018 -- loads both on first use
        assert self._embed is not None
        return self._embed

    def attached(self) -> contextlib.AbstractContextManager[None]:
        """Registers the report's listener on the hooks for a ``with`` block (the trainer's run)."""
        return _registered(self.hooks, self.listener)

    def anchors(self, loop: TrustLoop, snapshots: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The anchors of ``loop``'s group (an :data:`~tad_plugin.trust_loop.AnchorSource` once ``snapshots`` is
        bound): distilled at the group's first call from its ``snapshots`` (each float [E, P]: index t the
        parameters after t epochs) 0 .. ``tad.anchor_epoch``, then the same ones. Returns float [A, D] and
        int64 [A] on ``device``."""
        group = tuple(loop.experts)
        if group != self._group:
            self._group, self._anchors = group, self._distill_anchors(loop, snapshots)
        assert self._anchors is not None
        return self._anchors

    def _distill_anchors(self, loop: TrustLoop, snapshots: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Distill ``anchor_ipc`` images per class from the group's early trajectory and embed them."""
        cfg, epoch = self.config, loop.schedule.anchor_epoch
        m = cfg.anchor_matching
        if epoch < m.max_start_epoch - 1 + m.expert_epochs:
            raise ValueError(f"tad.anchor_epoch={epoch} is too early: anchors match snapshots up to "
                             f"max_start_epoch - 1 + expert_epochs = {m.max_start_epoch - 1 + m.expert_epochs}")
        if len(snapshots) < epoch + 1:
            raise RuntimeError(f"anchors need snapshots 0..{epoch} of the group, the trainer passed {len(snapshots)}")
        stacked = torch.stack(list(snapshots[:epoch + 1]), dim=1)  # [E, anchor_epoch+1, P]
        # Initialisation: trusted by the majority of the group's experts, with the current labels.
        pool = torch.nonzero(loop.trusted.float().mean(0).cpu() >= 0.5).flatten()
        gen = torch.Generator().manual_seed(self.seed + 7919 * loop.experts[0])
        matching = dataclasses.replace(m, seed=self.seed + loop.experts[0])
        try:
            return distill_anchors(self.net, matching, list(stacked.unbind(0)), loop.labels[0].cpu(), pool,
                                   cfg.anchor_ipc, loop.num_classes,
                                   lambda idx: self.preprocess(self.train_images[idx].to(self.device)),
                                   self.preprocess.to_unit, self.embed, generator=gen, device=self.device,
                                   progress=self.progress)
        except DistillDivergedError as err:  # not the distillation stage: say which distillation, and its knobs
            raise DistillDivergedError(
                f"TAD's anchors (distilled from the first {epoch} epochs of experts {loop.experts[0]}-"
                f"{loop.experts[-1]}, the inner loop's reference) diverged: {err}. The anchors take distill.lr_img "
                f"and distill.lr_lr: lower them, or run the outer loop alone with --set tad.inner_loop=false"
            ) from None


@contextlib.contextmanager
def _registered(hooks: TADHooks, plugin: object) -> Iterator[None]:
    hooks.pm.register(plugin)
    try:
        yield
    finally:
        hooks.pm.unregister(plugin)


def distill_anchors(net: ConvNetConfig, matching: MatchingConfig, early: Sequence[torch.Tensor],
                    labels: torch.Tensor, pool: torch.Tensor, ipc: int, num_classes: int,
                    images_at: Callable[[torch.Tensor], torch.Tensor], to_unit: Callable[[torch.Tensor], torch.Tensor],
                    embed: Embedder, *, generator: torch.Generator, device: torch.device | str,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner loop's anchors (paper Sec. 4.2): ``ipc`` images per class distilled by trajectory matching
    from the early trajectory, mapped back to [0, 1] pixels and embedded.

    Args:
        net: the experts' ConvNet.
        matching: the distillation settings (start epochs and ``expert_epochs`` must fit in ``early``).
        early: per expert, float [T+1, P]: its snapshots 0..T (flat, ``ConvNet.parameters()`` order).
        labels: int64 [N], the current labels of the training set.
        pool: int64 indices of the samples the initialisation may draw from (the trusted space).
        ipc: anchors per class; every class needs ``ipc`` pool samples.
        num_classes: C.
        images_at: int64 indices [M] -> their float images [M, C, H, W] in model-input space.
        to_unit: model-input images -> [0, 1] pixels (inverse ZCA / normalisation); clamped here.
        embed: [0, 1] images -> features [M, D].
        generator: CPU generator drawing the initialisation.
        device: where the distillation runs.

    Returns:
        ``(features, labels)``: float [C * ipc, D] and int64 [C * ipc] (class-major) on ``device``.

    Raises:
        ValueError: a class has fewer than ``ipc`` pool samples (the message says what to do).
    """
    idx = real_init_indices(labels, pool, ipc, num_classes, generator=generator)
    matcher = TrajectoryMatcher(net, matching, early, images_at(idx), class_labels(num_classes, ipc),
                                device=device, progress=progress)
    result = matcher.run()
    unit = to_unit(result.images.to(device)).clamp(0.0, 1.0)
    return embed(unit).to(device), result.labels.to(device)
