"""TAD's dual loop for any training host: the schedule, the per-expert trust state, and the hook calls.

A host trains E experts (the engine: a batched group; ``tad wrap``: upstream's one expert; your own loop:
one model) and asks a :class:`TrustLoop`, before every epoch, what to train on. The loop owns

* the state, per expert: the current labels (int64 [E, N]), the trusted space (bool [E, N]), the samples
  recalled so far (bool [E, N], for ``recall_once``) and the division's per-class thresholds (float [E, C]);
* the schedule (:class:`Schedule`): warm-up, a division every ``recompute_every`` epochs, recalibration
  against anchors from ``anchor_epoch`` on every ``recalibrate_every`` epochs, ``recall_once``, the warm-up
  confidence penalty, loss averaging, and the ``outer_loop`` / ``inner_loop`` switches;
* the calls of the hooks: ``filter_dataset`` (or ``filter_dataset_batch`` for all experts at once),
  ``expert_loss`` (through :meth:`TrustLoop.criterion`) and ``recalibrate`` (or ``recalibrate_batch``), and the
  notifications ``on_division`` / ``on_recalibration`` that listeners (the trust report, a logger) implement.

The host supplies what only it can compute, through callbacks: per-sample losses of its parameters
(:data:`LossPass`), and -- when the schedule recalibrates -- the samples' features and the anchors'
(:data:`AnchorSource`; the engine distils anchors from the early trajectory, a host without that can use
:func:`class_chunk_anchors`).

**Epoch convention** (the one used throughout the package): epochs are numbered from 0 by the epoch about to
run, which is also the number of epochs finished. ``before_epoch(t)`` is called with the parameters after
``t`` epochs (``t = 0``: the initialisation), before epoch ``t`` trains. Epochs ``0 .. warmup_epochs - 1`` are
the warm-up (all samples, the confidence penalty); a division runs before epoch ``t`` when ``t >=
warmup_epochs`` and ``(t - warmup_epochs) % recompute_every == 0``; a recalibration follows that division when
also ``t >= anchor_epoch`` and ``(t - anchor_epoch) % recalibrate_every == 0``. The engine's records and the
trust report label a round with this ``t`` ("after ``t`` epochs").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import torch

from .checks import check_bool_mask, check_features, check_labels, is_flag, is_integer
from .errors import TADError
from .losses import confidence_penalty
from .manager import TADHooks
from .results import TrustSplit

__all__ = [
    "AnchorSource",
    "LossPass",
    "Round",
    "Schedule",
    "TrustLoop",
    "TrustLoopError",
    "admit_once",
    "class_balanced_weights",
    "class_chunk_anchors",
    "expert_criterion",
    "mean_losses",
]

#: ``losses(back)``: per-sample cross-entropy (no augmentation, eval mode, no gradient) of every training sample
#: under the loop's current labels, for the parameters ``back`` epochs ago (0 = now; asked only for ``back <
#: min(loss_average, t + 1)``). Returns float [E, N], or ``(losses, predictions)`` with the argmax classes
#: int64 [E, N] (or None), on any device; with one expert [N] will do.
LossPass = Callable[[int], "torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]"]
#: ``anchors(loop)``: ``(anchor_features float [A, D], anchor_labels int64 [A])`` for a recalibration of the loop's
#: experts (called after the division, so ``loop.labels`` / ``loop.trusted`` are the division's); the host may
#: compute them once and return the same ones later.
AnchorSource = Callable[["TrustLoop"], "tuple[torch.Tensor, torch.Tensor]"]


class TrustLoopError(TADError, RuntimeError):
    """A hook or a host broke the trust loop's contract (a split of the wrong size, an empty trusted space)."""


def recalibration_meets_division(warmup_epochs: int, recompute_every: int, anchor_epoch: int,
                                 recalibrate_every: int) -> bool:
    """Whether some epoch is both a division epoch (``warmup_epochs + i * recompute_every``) and a recalibration
    epoch (``anchor_epoch + j * recalibrate_every``), i, j >= 0: the two progressions meet exactly when their
    starts differ by a multiple of the steps' greatest common divisor."""
    return (anchor_epoch - warmup_epochs) % math.gcd(recompute_every, recalibrate_every) == 0


@dataclass(frozen=True)
class Schedule:
    """When the trust loop divides, recalibrates and penalises (epochs as in the module docstring); :meth:`of`
    reads it from a ``TADConfig`` (``tad.*`` keys of the same names; defaults: the paper's schedule, as there).

    Attributes:
        warmup_epochs: epochs trained on every sample before the first division.
        recompute_every: a division every this many epochs from ``warmup_epochs`` on (1 = every epoch).
        outer_loop: divide at all (False: every sample with its label throughout, hooks but ``expert_loss`` unused).
        inner_loop: recalibrate after the due divisions (needs ``outer_loop``).
        anchor_epoch: the first epoch before which a recalibration may run (anchors are ready then).
        recalibrate_every: a recalibration follows the division before epoch t when t >= ``anchor_epoch`` and
            t - ``anchor_epoch`` is a multiple of this (epochs, not divisions: with ``recompute_every`` 2 and
            this 2 every division from ``anchor_epoch`` on recalibrates).
        recall_once: a sample is recalled at most once per expert (:func:`admit_once`); False = the paper.
        warmup_confidence_penalty: weight of :func:`~tad_plugin.losses.confidence_penalty` in the warm-up's loss
            (0 = off, the paper).
        loss_average: a division's losses are the mean over the last this many parameter snapshots (1 = the paper).
        split: ``"per-expert"`` (each expert its own division) or ``"shared"`` (one division of the experts'
            mean loss for all of them).

    Counts may be NumPy integers and switches NumPy booleans; they are stored as Python ``int`` / ``bool``.

    Raises:
        ValueError: a count that is no integer or below its minimum (the message names it), a switch that is no
            boolean (a string such as ``"no"`` would read as True), an unknown ``split``, ``inner_loop`` without
            ``outer_loop``, a negative or non-finite penalty, or an inner loop whose recalibration epochs never
            meet a division epoch.
    """

    warmup_epochs: int = 2
    recompute_every: int = 1
    outer_loop: bool = True
    inner_loop: bool = True
    anchor_epoch: int = 4
    recalibrate_every: int = 1
    recall_once: bool = False
    warmup_confidence_penalty: float = 0.0
    loss_average: int = 1
    split: str = "per-expert"

    @classmethod
    def of(cls, config: Any) -> Schedule:
        """The schedule of ``config`` (a ``TADConfig``, any object with these attribute names, or a mapping of
        them; missing names keep their defaults); ``None`` or a config with ``enabled`` False gives :meth:`off`."""
        if isinstance(config, Mapping):
            config = SimpleNamespace(**config)
        if config is None or not getattr(config, "enabled", True):
            return cls.off()
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})

    @classmethod
    def off(cls) -> Schedule:
        """No division, no recalibration, no penalty: every sample with its given label (the noisy baseline)."""
        return cls(warmup_epochs=0, outer_loop=False, inner_loop=False)

    def divides(self, epoch: int) -> bool:
        """Whether a division runs before ``epoch``."""
        done = epoch - self.warmup_epochs
        return self.outer_loop and done >= 0 and done % self.recompute_every == 0

    def recalibrates(self, epoch: int) -> bool:
        """Whether a recalibration follows the division before ``epoch`` (never without one)."""
        since = epoch - self.anchor_epoch
        return self.inner_loop and self.divides(epoch) and since >= 0 and since % self.recalibrate_every == 0

    def __post_init__(self) -> None:
        counts = {"warmup_epochs": 0, "anchor_epoch": 0, "recompute_every": 1, "recalibrate_every": 1,
                  "loss_average": 1}
        for name, least in counts.items():
            value = getattr(self, name)
            if not is_integer(value) or value < least:
                raise ValueError(f"Schedule.{name} must be an integer >= {least}, got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy integers as Python ones (records, JSON)
        for name in ("outer_loop", "inner_loop", "recall_once"):
            if not is_flag(getattr(self, name)):
                raise ValueError(f"Schedule.{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.split not in ("per-expert", "shared"):
            raise ValueError(f"Schedule.split must be 'per-expert' or 'shared', got {self.split!r}")
        if self.inner_loop and not self.outer_loop:
            raise ValueError("Schedule.inner_loop needs outer_loop (it recalibrates the samples a division leaves "
                             "out): set inner_loop=False too, or outer_loop=True")
        if self.inner_loop and not recalibration_meets_division(self.warmup_epochs, self.recompute_every,
                                                                 self.anchor_epoch, self.recalibrate_every):
            raise ValueError(f"Schedule never recalibrates: divisions come before epochs {self.warmup_epochs} + "
                             f"k * {self.recompute_every}, recalibrations only before epochs {self.anchor_epoch} + "
                             f"k * {self.recalibrate_every}, and the two never meet; change anchor_epoch or "
                             f"recalibrate_every (or set inner_loop=False)")
        penalty = self.warmup_confidence_penalty
        if not (isinstance(penalty, (int, float)) and math.isfinite(penalty) and penalty >= 0):
            raise ValueError(f"Schedule.warmup_confidence_penalty must be a finite number >= 0 (0 = off), got "
                             f"{self.warmup_confidence_penalty!r}")

    def penalty(self, epoch: int) -> float:
        """The confidence penalty's weight in ``epoch``: ``warmup_confidence_penalty`` in the warm-up, else 0."""
        return self.warmup_confidence_penalty if epoch < self.warmup_epochs else 0.0


@dataclass
class Round:
    """What :meth:`TrustLoop.before_epoch` did before ``epoch``.

    Attributes:
        epoch: the epoch about to run.
        losses: float [E, N], the (averaged) per-sample losses the division used; None = no division.
        predictions: int64 [E, N] or None, from the same pass (the last parameters).
        splits: the E division results (one shared split is repeated E times); None = no division.
        recalibrated: whether a recalibration changed ``labels`` / ``trusted`` after the division.
    """

    epoch: int
    losses: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    splits: list[TrustSplit] | None = None
    recalibrated: bool = False


def admit_once(previous_labels: torch.Tensor, previous_trusted: torch.Tensor, labels: torch.Tensor,
               trusted: torch.Tensor, ever_recalled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A recalibration's result with second recalls undone (``recall_once``).

    A recall is a sample the division left out of the trusted space (``previous_trusted`` False) that the
    recalibration put in (``trusted`` True), with its pseudo-label. A sample recalled before
    (``ever_recalled``) and expelled since by a division is not recalled again: it stays untrusted with its
    previous label. A division may still trust it again on its own loss. Samples the recalibration sieves
    out of the trusted space stay sieved.

    Args:
        previous_labels: int64 [..., N], the labels the recalibration started from (the division's).
        previous_trusted: bool [..., N], the trusted space it started from (the division's).
        labels: int64 [..., N], the recalibration's labels.
        trusted: bool [..., N], the recalibration's trusted space.
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


def class_balanced_weights(trusted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each sample's weight in a class-balanced draw from a trusted space (``tad.balance_classes``): one over
    the number of trusted samples carrying its label for a trusted sample, 0 for the others.

    Args:
        trusted: bool [..., N] (one row per expert, or one row).
        labels: int64 [..., N] in [0, num_classes), the same shape.
        num_classes: C.

    Returns:
        float32 [..., N] on ``trusted``'s device (no host sync).
    """
    per_class = torch.zeros(*trusted.shape[:-1], num_classes, device=trusted.device).scatter_add_(
        -1, labels, trusted.float())  # [..., C] trusted samples per label
    return trusted.float() / per_class.gather(-1, labels).clamp_min(1.0)


def class_chunk_anchors(features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor, num_classes: int,
                        per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors without distillation, from the trusted space: per class, ``per_class`` means of disjoint random
    chunks of its trusted samples' features (fewer when the class has fewer trusted samples; none when it has
    none).

    Args:
        features: float [N, D], the samples' features.
        labels: int64 [N], one expert's current labels.
        trusted: bool [N], that expert's trusted space.
        num_classes: C.
        per_class: the most anchors per class (``tad.anchor_ipc`` under ``tad wrap``). TAD's recalibration needs
            at least 2 anchors in every class (it weighs each anchor by its agreement with the others): pass
            >= 2, and note that a class without trusted samples gets none, which TAD's ``recalibrate`` refuses.
        generator: CPU generator drawing the chunks.

    Returns:
        ``(anchor_features, anchor_labels)``: float [A, D] and int64 [A] on ``features``' device.

    Raises:
        TypeError / ValueError: arguments of the wrong dtype or length, ``per_class`` < 1, or an empty trusted space.
    """
    check_features(features, "features")
    n = features.shape[0]
    check_labels(labels, num_classes, n=n)
    check_bool_mask(trusted, "trusted", n)
    if not is_integer(per_class) or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1 (anchors per class), got {per_class!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (torch.Generator().manual_seed(seed)) or None (torch's "
                        f"global one), got {type(generator).__name__}")
    if not bool(trusted.any()):
        raise ValueError("the trusted space is empty: no sample to draw anchors from; divide before recalibrating "
                         "(a later anchor epoch), or check the division's losses")
    feats, labs = [], []
    for c in range(num_classes):
        members = torch.nonzero(trusted & (labels == c)).flatten()
        if members.numel() == 0:
            continue
        perm = members[torch.randperm(members.numel(), generator=generator).to(members.device)]
        for chunk in perm.tensor_split(min(per_class, members.numel())):
            feats.append(features[chunk].float().mean(0))
            labs.append(c)
    return torch.stack(feats), torch.tensor(labs, dtype=torch.int64, device=features.device)


def mean_losses(losses: LossPass, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``losses(back)`` averaged over ``back = 0 .. count - 1`` (``tad.loss_average``; asked for the current
    parameters first, then from the oldest on), with the current parameters' predictions (or None)."""
    def ask(back: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        got = losses(back)
        if isinstance(got, tuple) and len(got) != 2:
            raise TrustLoopError(f"the loss pass returned a tuple of {len(got)}; return the losses, or (losses, "
                                 f"predictions) with predictions None when there are none")
        got = got if isinstance(got, tuple) else (got, None)
        if not isinstance(got[0], torch.Tensor) or not got[0].is_floating_point():
            kind = f"{got[0].dtype} tensor" if isinstance(got[0], torch.Tensor) else type(got[0]).__name__
            raise TrustLoopError(f"the loss pass must return per-sample losses as a float torch.Tensor [E, N] (or "
                                 f"[N] for one expert), got {kind}; convert with torch.as_tensor(..., "
                                 f"dtype=torch.float32)")
        return got

    if count < 1:
        raise ValueError(f"mean_losses needs at least one parameter snapshot, got count={count}")
    total, predictions = ask(0)
    for back in range(count - 1, 0, -1):
        older = ask(back)[0]
        if older.shape != total.shape:  # a broadcast would average wrong numbers in silence
            raise TrustLoopError(f"the loss pass returned {tuple(older.shape)} for the parameters {back} epoch(s) "
                                 f"back but {tuple(total.shape)} for the current ones; return [E, N] every time")
        total = total + older
    return total / count, predictions


def expert_criterion(hooks: TADHooks | None, penalty: float = 0.0) -> Callable[..., torch.Tensor]:
    """``loss(logits [B, C] float, targets [B] int64, penalty_logits=None) -> scalar``, the batch-mean training
    loss: the ``expert_loss`` hook plus ``penalty`` times :func:`~tad_plugin.losses.confidence_penalty` of
    ``penalty_logits`` (None = ``logits``; a host may pass another view of the same logits to keep its own
    autograd graph); plain cross-entropy when ``hooks`` is None. Pure (GSAM evaluates it twice per step); for E
    experts batched, pass the [E*B, C] logits and scale by E."""
    def loss(logits: torch.Tensor, targets: torch.Tensor, penalty_logits: torch.Tensor | None = None) -> torch.Tensor:
        if hooks is None:
            if logits.shape[0] == 0:  # the mean of nothing is NaN, which would poison the parameters in silence
                raise ValueError("the training criterion got an empty batch (0 samples): skip the step")
            return torch.nn.functional.cross_entropy(logits, targets)
        value = hooks.expert_loss(logits, targets)
        if penalty:
            value = value + penalty * confidence_penalty((logits if penalty_logits is None else penalty_logits).float())
        return value

    return loss


class TrustLoop:
    """The trust state of E experts trained together, and the one schedule that updates it.

    Args:
        hooks: the hook facade; None only with a schedule that neither divides nor penalises (``outer_loop``
            False and ``warmup_confidence_penalty`` 0: no hook is called then, and :meth:`criterion` is plain
            cross-entropy).
        schedule: when to divide and recalibrate (:meth:`Schedule.of` a ``TADConfig``).
        labels: int64 [E, N] (each expert's labels) or [N] (E = 1), in [0, num_classes): the labels training
            starts from. The loop keeps its state on their device.
        num_classes: C.
        experts: the experts' identifiers for messages and notifications (default 0 .. E-1).

    Attributes:
        labels: int64 [E, N], each expert's current labels.
        trusted: bool [E, N], each expert's trusted space (all True before the first division).
        ever_recalled: bool [E, N], the samples recalled so far (tracked only with ``recall_once``).
        thresholds: float32 [E, C], the last division's per-class thresholds (NaN before the first division).

    The attributes are the state after the last :meth:`before_epoch` / :meth:`update`.

    Raises:
        TypeError: ``labels`` is not a non-empty int64 tensor [N] or [E, N].
        ValueError: a label outside [0, num_classes), ``len(experts)`` other than E, or ``hooks`` None with a
            schedule that needs them.
    """

    def __init__(self, hooks: TADHooks | None, schedule: Schedule, labels: torch.Tensor, num_classes: int,
                 experts: Sequence[int] | None = None) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule (Schedule.of(tad_config), or Schedule.off() for no "
                            f"division), got {type(schedule).__name__}")
        if not is_integer(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        num_classes = int(num_classes)
        if hooks is None and (schedule.outer_loop or schedule.warmup_confidence_penalty):
            raise ValueError("a TrustLoop that divides or penalises needs the hooks")
        self.hooks, self.schedule, self.num_classes = hooks, schedule, num_classes
        if not isinstance(labels, torch.Tensor) or labels.dim() not in (1, 2) or not labels.numel():
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise TypeError(f"labels must be a non-empty int64 tensor [N] or [E, N] (one row per expert), got {got}")
        check_labels(labels.reshape(-1), num_classes)  # int64, in [0, num_classes)
        labels = labels.unsqueeze(0) if labels.dim() == 1 else labels
        e, n = labels.shape
        self.experts = list(range(e)) if experts is None else list(experts)
        if len(self.experts) != e:
            raise ValueError(f"{len(self.experts)} expert identifiers for {e} rows of labels")
        self.device = labels.device
        self.labels = labels.clone()
        self.trusted = torch.ones(e, n, dtype=torch.bool, device=self.device)
        self.ever_recalled = torch.zeros(e, n, dtype=torch.bool, device=self.device)
        self.thresholds = torch.full((e, num_classes), float("nan"), device=self.device)

    # ------------------------------------------------------------------ training
    def criterion(self, epoch: int) -> Callable[..., torch.Tensor]:
        """The training criterion of ``epoch``: :func:`expert_criterion` with the schedule's penalty weight
        (``warmup_confidence_penalty`` in the warm-up, else 0); plain cross-entropy for a loop without hooks."""
        return expert_criterion(self.hooks, self.schedule.penalty(epoch))

    def weights(self) -> torch.Tensor:
        """float32 [E, N]: each sample's weight in the next epoch's draw -- class-balanced over the trusted
        space (:func:`class_balanced_weights`, for ``tad.balance_classes``), 0 for untrusted samples."""
        return class_balanced_weights(self.trusted, self.labels, self.num_classes)

    # ------------------------------------------------------------------ the schedule
    def before_epoch(self, epoch: int, losses: LossPass, features: Callable[[], torch.Tensor] | None = None,
                     anchors: AnchorSource | None = None) -> Round:
        """Run what the schedule says before ``epoch``: a division (from ``losses``), then a recalibration
        (when ``features`` and ``anchors`` are given and the schedule's inner loop is due).

        Args:
            epoch: the 0-based epoch about to be trained.
            losses: the :data:`LossPass`: called only when a division is due, once per averaged snapshot.
            features: returns float [N, D], the samples' features; the recalibration runs on its device.
                None = no recalibration, even when the schedule is due.
            anchors: the :data:`AnchorSource`; None = no recalibration, even when the schedule is due.

        Returns:
            The :class:`Round`: what ran (an empty round when the schedule does nothing before ``epoch``).

        Raises:
            TrustLoopError: the loss pass returned something other than a float tensor [E, N], a split of the
                wrong size, or an expert left without trusted samples.
        """
        out = Round(epoch)
        if not self.schedule.divides(epoch):
            return out
        out.losses, out.predictions = self._mean_losses(epoch, losses)
        out.splits = self.divide(epoch, out.losses, out.predictions)
        self.check_nonempty(epoch)  # before anchors are drawn from the trusted space
        if features is not None and anchors is not None and self.schedule.recalibrates(epoch):
            drawn = anchors(self)
            if not isinstance(drawn, (tuple, list)) or len(drawn) != 2:
                raise TrustLoopError(f"the anchor source must return (anchor_features [A, D], anchor_labels [A]), "
                                     f"got {type(drawn).__name__}"
                                     f"{f' of {len(drawn)}' if isinstance(drawn, (tuple, list)) else ''}")
            self.recalibrate(epoch, features(), *drawn, predictions=out.predictions)
            out.recalibrated = True
        return out

    def _mean_losses(self, epoch: int, losses: LossPass) -> tuple[torch.Tensor, torch.Tensor | None]:
        total, predictions = mean_losses(losses, min(self.schedule.loss_average, epoch + 1))
        if total.dim() == 1 and self.labels.shape[0] == 1:  # one expert: [N] is [1, N]
            total = total.unsqueeze(0)
            predictions = None if predictions is None else predictions.reshape(1, -1)
        if total.shape != self.labels.shape:
            raise TrustLoopError(f"the host's loss pass returned {tuple(total.shape)}; the trust loop holds "
                                 f"{tuple(self.labels.shape)} ([experts, N]) labels")
        if predictions is not None:
            if (not isinstance(predictions, torch.Tensor) or predictions.dtype != torch.int64
                    or predictions.shape != self.labels.shape):
                got = (f"{predictions.dtype} {tuple(predictions.shape)}" if isinstance(predictions, torch.Tensor)
                       else type(predictions).__name__)
                raise TrustLoopError(f"the loss pass's predictions must be the argmax classes, int64 "
                                     f"{list(self.labels.shape)} ([experts, N]), or None; got {got} (logits? take "
                                     f".argmax(-1))")
            check_labels(predictions.reshape(-1), self.num_classes, "the loss pass's predictions")
        return total, predictions

    def divide(self, epoch: int, losses: torch.Tensor, predictions: torch.Tensor | None = None) -> list[TrustSplit]:
        """The division (outer loop) before ``epoch`` from per-sample ``losses`` float [E, N] under the current
        labels: ``filter_dataset`` on the experts' mean loss (``split: shared``), else per expert
        (``filter_dataset_batch`` where the plugins allow). Sets ``trusted`` and ``thresholds``, notifies
        ``on_division``; returns the E splits."""
        assert self.hooks is not None
        k, (e, n) = self.num_classes, losses.shape
        if self.schedule.split == "shared":
            splits = [self.hooks.filter_dataset(losses.mean(0), self.labels[0], k)] * e
        else:
            splits = self.hooks.filter_dataset_batch(losses, self.labels, k)
        for split in splits:
            if split.trusted.shape != (n,) or split.thresholds.shape != (k,):
                raise TrustLoopError(f"filter_dataset returned trusted {tuple(split.trusted.shape)} and thresholds "
                                     f"{tuple(split.thresholds.shape)}; the contract is [N] = ({n},) and "
                                     f"[num_classes] = ({k},) -- fix the plugin's filter_dataset")
        self.trusted = torch.stack([s.trusted.to(self.device) for s in splits])
        self.thresholds = torch.stack([s.thresholds.to(self.device, torch.float32) for s in splits])
        for i, expert in enumerate(self.experts):
            self.hooks.notify_division(expert=expert, epoch=epoch, split=splits[i], labels=self.labels[i],
                                       trusted=self.trusted[i],
                                       predictions=None if predictions is None else predictions[i])
        return splits

    def recalibrate(self, epoch: int, features: torch.Tensor, anchor_features: torch.Tensor,
                    anchor_labels: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        """The recalibration (inner loop) before ``epoch``: ``recalibrate_batch`` for the experts
        (:meth:`tad_plugin.TADHooks.recalibrate_batch`: per expert where a plugin only implements ``recalibrate``,
        experts whose labels and trusted space equal the first expert's reusing its call), second recalls undone with
        ``recall_once`` (:func:`admit_once`), then ``on_recalibration`` notified.

        Args:
            features: float [N, D]; the hook runs on their device.
            anchor_features: float [A, D], the anchors' features.
            anchor_labels: int64 [A], the anchors' classes.
            predictions: int64 [E, N] or None, the experts' classes from the division's pass (for listeners).
        """
        assert self.hooks is not None
        dev = features.device
        anchor_features, anchor_labels = anchor_features.to(dev), anchor_labels.to(dev)
        prev_labels, prev_trusted = self.labels.to(dev), self.trusted.to(dev)
        recs = self.hooks.recalibrate_batch(features, prev_labels, prev_trusted, anchor_features, anchor_labels,
                                            self.num_classes)
        n = prev_labels.shape[1]
        for expert, r in zip(self.experts, recs):
            if tuple(r.labels.shape) != (n,) or tuple(r.trusted.shape) != (n,):
                raise TrustLoopError(f"recalibrate returned labels {tuple(r.labels.shape)} and trusted "
                                     f"{tuple(r.trusted.shape)} for expert {expert}; the contract is [N] = ({n},) "
                                     f"each -- fix the plugin's recalibrate / recalibrate_batch")
        new_labels = torch.stack([r.labels.to(dev) for r in recs])
        new_trusted = torch.stack([r.trusted.to(dev) for r in recs])
        if self.schedule.recall_once:
            new_labels, new_trusted, ever = admit_once(prev_labels, prev_trusted, new_labels, new_trusted,
                                                       self.ever_recalled.to(dev))
            self.ever_recalled = ever.to(self.device)
        self.update(new_labels, new_trusted, epoch=epoch)
        for i, expert in enumerate(self.experts):
            self.hooks.notify_recalibration(expert=expert, epoch=epoch, labels=self.labels[i],
                                            trusted=self.trusted[i], previous_labels=prev_labels[i],
                                            previous_trusted=prev_trusted[i],
                                            predictions=None if predictions is None else predictions[i])

    # ------------------------------------------------------------------ the host's changes
    def update(self, labels: torch.Tensor | None = None, trusted: torch.Tensor | None = None, *,
               epoch: int) -> None:
        """Replace the labels (int64 [E, N]) and/or the trusted space (bool [E, N]) before ``epoch``, checked
        (a recalibration's result, or a host's own change); None leaves one as it is.

        The loop keeps copies: changing the given tensors afterwards does not change its state.

        Raises:
            TrustLoopError: not a tensor, a shape or dtype other than the loop's, or an expert left without
                trusted samples.
            ValueError: a label outside [0, num_classes).
        """
        for name, value in (("labels", labels), ("trusted", trusted)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TrustLoopError(f"update's {name} must be a torch.Tensor, got {type(value).__name__}; convert "
                                     f"with torch.as_tensor")
        if labels is not None:
            new = labels.to(self.device, copy=True)
            if new.shape != self.labels.shape or new.dtype != torch.int64:
                raise TrustLoopError(f"new labels {new.dtype} {tuple(new.shape)} before epoch {epoch}; expected "
                                     f"int64 {tuple(self.labels.shape)} ([experts, N])")
            for row in new:
                check_labels(row, self.num_classes, "recalibrated labels")
            self.labels = new
        if trusted is not None:
            new_t = trusted.to(self.device, copy=True)
            if new_t.shape != self.trusted.shape or new_t.dtype != torch.bool:
                raise TrustLoopError(f"new trusted space {new_t.dtype} {tuple(new_t.shape)} before epoch {epoch}; "
                                     f"expected bool {tuple(self.trusted.shape)} ([experts, N])")
            self.trusted = new_t
            self.check_nonempty(epoch)

    def check_nonempty(self, epoch: int) -> None:
        """Raise :class:`TrustLoopError` naming the first expert without trusted samples (one host read)."""
        counts = self.trusted.sum(1)
        if bool((counts == 0).any()):
            bad = self.experts[int((counts == 0).nonzero()[0])]
            raise TrustLoopError(f"expert {bad}: the trusted space is empty before epoch {epoch}; check the plugin's "
                                 f"filter_dataset / recalibrate (or the host's update)")
