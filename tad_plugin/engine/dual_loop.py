"""TAD's dual loop around expert training (paper Sec. 4, Fig. 3), as an expert-training epoch callback.

The outer loop (division by ``filter_dataset`` after the warm-up, experts trained on the trusted space
with ``expert_loss``) runs inside :class:`~tad_plugin.engine.experts.ExpertTrainer`. :class:`DualLoop`
adds the inner loop, per group of experts trained together:

1. **Anchors.** When the group has finished ``anchor_epoch`` epochs, anchors are distilled by matching
   only the early trajectory of the group's experts (snapshots 0 .. ``anchor_epoch``; with the
   default ``max_start_epoch = 2`` and ``expert_epochs = 2`` the start epoch is 0 or 1, the paper's
   "first four epochs"), ``anchor_ipc`` images per class initialised from the trusted space with the
   current labels. They are mapped back to [0, 1] pixels (inverse ZCA / normalisation) and embedded
   with the self-supervised extractor, once per group.
2. **Recalibration.** From then on, after every ``recalibrate_every``-th epoch that ended with a division
   (none during the outer loop's warm-up), ``recalibrate`` runs
   for every expert with the fixed sample features, the expert's current labels and trusted space
   (just re-divided by the outer loop) and the anchors; recalled samples join the trusted space with
   their pseudo-labels, sieved ones leave it. The next division sees the recalibrated labels, so the
   two loops iterate: recalled samples with corrected labels get low losses and stay trusted.

Schedule choices and why: anchors once per group, because the early trajectory they match does not
change afterwards (re-distilling them would cost time and change nothing the paper describes);
recalibration after every division by default, so each outer round starts from the inner loop's
latest labels; the split is per expert (``TADConfig.split``) unless configured shared. ``recall_once``
(off by default, as in the paper) keeps a sample that a recalibration recalled and a later division
expelled out of later recalls (:func:`admit_once`), for when later recalibrations keep re-admitting the
samples the divisions expel (the trust report's ``rerecalled`` counts them).

A :class:`~tad_plugin.trust_report.TrustReport` (``DualLoop.report``) of the first expert of the first
group records every division and
recalibration (with precision / recall when clean labels are given).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..manager import TADHooks
from ..trust_report import TrustReport
from .convnet import ConvNetConfig
from .experts import EpochState, TrustUpdate, recalibrate_experts
from .matching import MatchingConfig, TrajectoryMatcher, class_labels, real_init_indices
from .preprocess import Preprocessor

__all__ = ["DualLoopConfig", "DualLoop", "distill_anchors", "admit_once", "Embedder"]

#: ``embed(images)``: float images in [0, 1] [M, C, H, W] -> features [M, D] (e.g. FeatureExtractor.embed).
Embedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DualLoopConfig:
    """When and how the inner loop runs.

    Attributes:
        anchor_epoch: anchors are distilled after this many expert epochs (from snapshots
            0 .. anchor_epoch); must be >= ``anchor_matching.max_start_epoch - 1 +
            anchor_matching.expert_epochs``.
        anchor_ipc: anchors per class (n in the paper; >= 2 so a class covariance exists).
        recalibrate_every: recalibrate after every k-th epoch from ``anchor_epoch`` on.
        recall_once: a sample is recalled at most once per expert (:func:`admit_once`); False = as often
            as the recalibration recalls it (the paper).
        anchor_matching: the distillation settings for the anchors (few iterations suffice: the
            anchors only need to sit near their class's early-trajectory "prototype").
    """

    anchor_epoch: int = 4
    anchor_ipc: int = 10
    recalibrate_every: int = 1
    recall_once: bool = False
    anchor_matching: MatchingConfig = dataclasses.field(default_factory=lambda: MatchingConfig(
        iterations=200, syn_steps=20, expert_epochs=2, max_start_epoch=2, lr_img=100.0, lr_lr=1e-5,
        lr_teacher=0.01, eval_every=0, checkpoint_every=0, log_every=50))

    def __post_init__(self) -> None:
        m = self.anchor_matching
        if self.anchor_ipc < 2:
            raise ValueError(f"anchor_ipc must be >= 2 (a class covariance needs two anchors), got {self.anchor_ipc}")
        if self.recalibrate_every < 1:
            raise ValueError(f"recalibrate_every must be >= 1, got {self.recalibrate_every}")
        if self.anchor_epoch < m.max_start_epoch - 1 + m.expert_epochs:
            raise ValueError(f"anchor_epoch={self.anchor_epoch} is too early: anchors match snapshots up to "
                             f"max_start_epoch - 1 + expert_epochs = {m.max_start_epoch - 1 + m.expert_epochs}")


def admit_once(previous_labels: torch.Tensor, previous_trusted: torch.Tensor, labels: torch.Tensor,
               trusted: torch.Tensor, ever_recalled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A recalibration's result with second recalls undone.

    A recall is a sample the division left out of the trusted space (``previous_trusted`` False) that the
    recalibration put in (``trusted`` True), with its pseudo-label. A sample recalled before
    (``ever_recalled``) and expelled since by a division is not recalled again: it stays untrusted with its
    previous label. A division may still trust it again on its own loss. Samples the recalibration sieves
    out of the trusted space stay sieved.

    Args:
        previous_labels, previous_trusted: int64 / bool [..., N], the labels and trusted space the
            recalibration started from (the division's).
        labels, trusted: int64 / bool [..., N], the recalibration's result.
        ever_recalled: bool [..., N], the samples recalled by earlier recalibrations.

    Returns:
        ``(labels, trusted, ever_recalled)``: the result without the second recalls, and the recalled set
        including this round's first recalls. Same shapes and devices as the inputs.
    """
    shape = previous_labels.shape
    for name, x in (("previous_trusted", previous_trusted), ("labels", labels), ("trusted", trusted),
                    ("ever_recalled", ever_recalled)):
        if x.shape != shape:
            raise ValueError(f"admit_once: {name} has shape {tuple(x.shape)}, previous_labels {tuple(shape)}")
    for name, x in (("previous_trusted", previous_trusted), ("trusted", trusted), ("ever_recalled", ever_recalled)):
        if x.dtype != torch.bool:
            raise ValueError(f"admit_once: {name} must be a bool mask (True = trusted / recalled), got {x.dtype}")
    recalled = trusted & ~previous_trusted
    again = recalled & ever_recalled
    return (torch.where(again, previous_labels, labels), trusted & ~again, ever_recalled | (recalled & ~again))


class DualLoop:
    """The inner loop as an :data:`~tad_plugin.engine.experts.EpochCallback` (see the module docstring).

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
        hooks: the hook facade (``recalibrate`` is called through it).
        config: the schedule.
        noisy_labels: int64 [N], the labels the run started from (for the report).
        clean_labels: int64 [N] or None; with them the report has precision / recall.
        device: where anchors are distilled and recalibration runs.
        seed: seeds the anchors' initialisation and distillation.
        report_path: where the trust report is rewritten (atomically) after every round it records, so
            a run stopped mid-buffer keeps it; None = kept in memory only (``DualLoop.report``).
    """

    def __init__(self, net: ConvNetConfig, preprocess: Preprocessor, train_images: torch.Tensor,
                 features: torch.Tensor | Callable[[], tuple[torch.Tensor, Embedder]], embed: Embedder | None,
                 hooks: TADHooks, config: DualLoopConfig | None = None,
                 *, noisy_labels: torch.Tensor, clean_labels: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, progress: bool = False,
                 report_path: str | os.PathLike[str] | None = None) -> None:
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
        self.report = TrustReport()
        self.report_path = report_path
        self._group: tuple[int, ...] | None = None
        self._report_group: tuple[int, ...] | None = None
        self._anchors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ever_recalled: torch.Tensor | None = None  # bool [E, N] of the current group (recall_once)

    def _set_features(self, features: torch.Tensor, embed: Embedder | None) -> None:
        if features.dim() != 2 or features.shape[0] != self.train_images.shape[0]:
            raise ValueError(f"features must be [N={self.train_images.shape[0]}, D], got {tuple(features.shape)}")
        if embed is None:
            raise ValueError("embed is None: pass the extractor's embed with the features")
        self._features, self._embed = features.to(self.device), embed

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

    def __call__(self, state: EpochState) -> TrustUpdate | None:
        group = tuple(state.experts)
        if group != self._group:
            self._group, self._anchors, self._ever_recalled = group, None, None
        if self._report_group is None:
            self._report_group = group
        first = group == self._report_group  # the report follows the first expert of the first group
        finished = state.epoch + 1  # epochs done by the group
        if first and state.splits is not None:
            self.report.add(epoch=finished, stage="division", trusted=state.trusted[0], labels=state.labels[0],
                            noisy_labels=self.noisy_labels, clean_labels=self.clean_labels)
            self._save_report()
        cfg = self.config
        if state.splits is None:  # recalibration follows a division (none during the warm-up)
            return None
        if finished < cfg.anchor_epoch or (finished - cfg.anchor_epoch) % cfg.recalibrate_every:
            return None
        if self._anchors is None:
            self._anchors = self._distill_anchors(state)
        update = recalibrate_experts(self.hooks, self.features, state, *self._anchors)
        if cfg.recall_once:
            update = self._admit_once(state, update)
        if first:
            # the division's own pass predicted every sample: agreement with the new labels costs no extra pass
            preds = state.predictions
            agrees = None if preds is None else preds[0] == update.labels[0].to(preds.device)
            self.report.add(epoch=finished, stage="recalibration", trusted=update.trusted[0],
                            labels=update.labels[0], noisy_labels=self.noisy_labels,
                            clean_labels=self.clean_labels, previous_trusted=state.trusted[0],
                            expert_agrees=agrees)
            self._save_report()
        return update

    def _admit_once(self, state: EpochState, update: TrustUpdate) -> TrustUpdate:
        """:func:`admit_once` for every expert of the group, tracking the group's recalls."""
        assert update.labels is not None and update.trusted is not None
        dev = update.labels.device
        if self._ever_recalled is None:
            self._ever_recalled = torch.zeros_like(update.trusted, dtype=torch.bool)
        labels, trusted, self._ever_recalled = admit_once(state.labels.to(dev), state.trusted.to(dev), update.labels,
                                                          update.trusted, self._ever_recalled)
        return TrustUpdate(labels=labels, trusted=trusted)

    def _save_report(self) -> None:
        if self.report_path is not None:
            self.report.save_json(self.report_path)

    def _distill_anchors(self, state: EpochState) -> tuple[torch.Tensor, torch.Tensor]:
        """Distill ``anchor_ipc`` images per class from the group's early trajectory and embed them."""
        cfg = self.config
        if len(state.snapshots) < cfg.anchor_epoch + 1:
            raise RuntimeError(f"anchors need snapshots 0..{cfg.anchor_epoch} of the group, the trainer passed "
                               f"{len(state.snapshots)}")
        stacked = torch.stack(list(state.snapshots[:cfg.anchor_epoch + 1]), dim=1)  # [E, anchor_epoch+1, P]
        # Initialisation: trusted by the majority of the group's experts, with the current labels.
        pool = torch.nonzero(state.trusted.float().mean(0).cpu() >= 0.5).flatten()
        gen = torch.Generator().manual_seed(self.seed + 7919 * state.experts[0])
        matching = dataclasses.replace(cfg.anchor_matching, seed=self.seed + state.experts[0])
        return distill_anchors(self.net, matching, list(stacked.unbind(0)), state.labels[0].cpu(), pool,
                               cfg.anchor_ipc, state.num_classes,
                               lambda idx: self.preprocess(self.train_images[idx].to(self.device)),
                               self.preprocess.to_unit, self.embed, generator=gen, device=self.device,
                               progress=self.progress)


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
