"""The hook specifications of tad_plugin: the three points where TAD enters a distiller.

``filter_dataset_batch`` is the first point for E experts at once (an optional fast path; a plugin that
implements only ``filter_dataset`` keeps deciding every division, see
:meth:`tad_plugin.TADHooks.filter_dataset_batch`); ``recalibrate_batch`` is the third, likewise
(:meth:`tad_plugin.TADHooks.recalibrate_batch`).

A plugin is any object or module whose functions are marked with :data:`hookimpl` and named after
one of the specs below. Implementations may accept any subset of a spec's parameters (pluggy passes
only the ones they name) and must not give them defaults. The decisions (``filter_dataset``,
``filter_dataset_batch``, ``expert_loss``, ``recalibrate``, ``recalibrate_batch``) are ``firstresult``: the first
implementation that returns something other than ``None`` decides, so a plugin registered after TAD's default (``tad``)
overrides it, and returning ``None`` defers to the next one. The reports (``on_division``,
``on_recalibration``) are notifications: every implementation is called, results are ignored (the trust
report, :class:`tad_plugin.trust_report.TrustReportListener`, is one such listener; a logger is another).
Epochs follow :mod:`tad_plugin.trust_loop`'s convention: the epoch about to run, i.e. the epochs finished.

Hosts call hooks by keyword only, e.g. ``pm.hook.expert_loss(logits=z, targets=y)``, or through
the typed facade :class:`tad_plugin.TADHooks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from .results import Recalibration, TrustSplit

PROJECT_NAME = "tad_plugin"
ENTRY_POINT_GROUP = "tad_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations: decorate functions or methods named after a hook spec.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def filter_dataset(losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> TrustSplit | None:
    """Divide the training set into trusted and untrusted spaces (the outer loop, Sec. 4.1).

    When: during expert training, after the warm-up epochs and then whenever the host recomputes the
    division (by default after every expert epoch), before the next epoch's training set is built.

    :param losses: float tensor [N]; per-sample cross-entropy of every training sample under the
        current expert, computed without augmentation in eval mode, against ``labels``. Finite.
    :param labels: int64 tensor [N]; the current (possibly noisy or recalibrated) label of each
        sample, in [0, num_classes).
    :param num_classes: number of classes C.
    :return: a :class:`~tad_plugin.TrustSplit` with ``trusted`` (bool [N], True = trusted),
        ``confidence`` (float [N], w_i) and ``thresholds`` (float [C], tau_c), on the device of
        ``losses``; or ``None`` to defer to the next implementation. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def filter_dataset_batch(losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Sequence[TrustSplit] | None:
    """``filter_dataset`` for the E experts of a group at once (optional; a faster path for batched hosts).

    When: where a host would call ``filter_dataset`` once per expert with row ``e`` of ``losses`` and
    ``labels``, it calls this instead, but only if every registered plugin that implements
    ``filter_dataset`` also implements this hook (so a plugin that implements only the per-expert
    ``filter_dataset`` still decides every division); if every implementation returns ``None``, the host
    falls back to the per-expert calls. A plugin implementing both must return, for each row, what its
    ``filter_dataset`` returns for that row (up to float rounding).

    :param losses: float tensor [E, N]; row ``e`` as ``filter_dataset``'s ``losses`` for expert ``e``.
    :param labels: int64 tensor [E, N]; row ``e`` the labels of expert ``e``, in [0, num_classes).
    :param num_classes: number of classes C.
    :return: a sequence of E :class:`~tad_plugin.TrustSplit` (entry ``e`` for row ``e``, each as
        ``filter_dataset`` returns it), on the device of ``losses``; or ``None`` to defer. Stops at first
        non-None result.
    """


@hookspec(firstresult=True)
def expert_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """The criterion for training experts on the trusted space (Eq. 6).

    When: at every expert training step, in place of the distiller's cross-entropy. SAM-style
    optimisers (FTD/DATM's GSAM) call it twice per step, so an implementation must be pure: no state
    changes between calls, the same inputs give the same value.

    :param logits: float tensor [B, C], B >= 1 (TAD's implementation raises ``ValueError`` on an empty batch,
        whose mean would be NaN); the expert's outputs for a batch (requires grad).
    :param targets: int64 tensor [B] of class indices in [0, C).
    :return: a scalar float tensor, the mean loss over the batch, differentiable w.r.t. ``logits``;
        or ``None`` to defer. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def recalibrate(features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                num_classes: int) -> Recalibration | None:
    """Score the trusted space against distilled anchors and recall untrusted samples (Sec. 4.2).

    When: in the dual loop, after anchors have been distilled from the early expert trajectory and
    embedded, typically once per outer round; its result replaces the labels and the trusted mask
    used for the following expert epochs.

    :param features: float tensor [N, D]; self-supervised features of every training sample.
    :param labels: int64 tensor [N]; the current labels, in [0, num_classes).
    :param trusted: bool tensor [N]; the current trusted space (True = trusted).
    :param anchor_features: float tensor [A, D]; features of the distilled anchor images.
    :param anchor_labels: int64 tensor [A]; the class of each anchor, in [0, num_classes).
    :param num_classes: number of classes C.
    :return: a :class:`~tad_plugin.Recalibration` with ``labels`` (int64 [N]; recalled samples carry
        their pseudo-label), ``trusted`` (bool [N]; the new trusted space) and ``reliability``
        (float [N]; in [0, 1] for samples trusted on entry, 1 = most reliable, NaN elsewhere), on the
        device of ``features``; or ``None`` to defer. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def recalibrate_batch(features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                      anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                      num_classes: int) -> Sequence[Recalibration] | None:
    """``recalibrate`` for the E experts of a group at once (optional; a faster path for batched hosts).

    When: where a host would call ``recalibrate`` once per expert with row ``e`` of ``labels`` and
    ``trusted`` (the same features and anchors for all), it calls this instead, but only if every registered
    plugin that implements ``recalibrate`` also implements this hook; if every implementation returns
    ``None``, the host falls back to the per-expert calls. A plugin implementing both must return, for each
    row, what its ``recalibrate`` returns for that row.

    :param features: float tensor [N, D]; as ``recalibrate``'s, shared by the E experts.
    :param labels: int64 tensor [E, N]; row ``e`` the labels of expert ``e``, in [0, num_classes).
    :param trusted: bool tensor [E, N]; row ``e`` the trusted space of expert ``e``.
    :param anchor_features: float tensor [A, D]; features of the distilled anchor images.
    :param anchor_labels: int64 tensor [A]; the class of each anchor, in [0, num_classes).
    :param num_classes: number of classes C.
    :return: a sequence of E :class:`~tad_plugin.Recalibration` (entry ``e`` for row ``e``, each as
        ``recalibrate`` returns it), on the device of ``features``; or ``None`` to defer. Stops at first
        non-None result.
    """


@hookspec
def on_division(expert: int, epoch: int, split: TrustSplit, labels: torch.Tensor, trusted: torch.Tensor,
                predictions: torch.Tensor | None) -> None:
    """Notification: a division was made for ``expert`` before ``epoch`` (after ``epoch`` epochs).

    Called by :class:`tad_plugin.trust_loop.TrustLoop` once per expert after every division. Listeners must
    not change the tensors; a host syncs nothing for them, so a listener that reads values pays for its reads.

    :param expert: the expert's identifier (the engine: its index in the trajectory store).
    :param epoch: the epoch about to run.
    :param split: the :class:`~tad_plugin.TrustSplit` (for ``split: shared``, the group's one split).
    :param labels: int64 [N], the labels the division was made under.
    :param trusted: bool [N], the trusted space it made.
    :param predictions: int64 [N] or None, the expert's argmax classes from the division's loss pass.
    """


@hookspec
def on_recalibration(expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor,
                     previous_labels: torch.Tensor, previous_trusted: torch.Tensor,
                     predictions: torch.Tensor | None) -> None:
    """Notification: a recalibration changed ``expert``'s labels and trusted space before ``epoch``.

    :param expert: the expert's identifier; :param epoch: the epoch about to run (as ``on_division``).
    :param labels: int64 [N], the labels after the recalibration (recalled samples carry their pseudo-labels).
    :param trusted: bool [N], the trusted space after it (with ``recall_once`` applied).
    :param previous_labels: int64 [N], the division's labels, which it started from.
    :param previous_trusted: bool [N], the division's trusted space.
    :param predictions: int64 [N] or None, the expert's classes from the division's loss pass.
    """
