"""The plugin manager and the typed facade host code calls the hooks through."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import pluggy
import torch

from . import hookspecs
from .errors import TADError
from .results import Recalibration, TrustSplit

__all__ = ["BLOCKED_ENV", "DISABLE_AUTOLOAD_ENV", "TRACE_ENV", "HookError", "TADHooks", "get_plugin_manager"]

#: Set to any value other than empty, ``0``, ``false`` or ``no`` to skip loading third-party plugins from entry
#: points.
DISABLE_AUTOLOAD_ENV = "TAD_PLUGIN_DISABLE_AUTOLOAD"
#: Comma-separated plugin names (entry-point names, or ``tad``) that must not be registered.
BLOCKED_ENV = "TAD_PLUGIN_BLOCKED"
#: Set to any value other than empty, ``0``, ``false`` or ``no`` (e.g. ``1``) to log every hook call (name,
#: implementations, result type) at INFO level.
TRACE_ENV = "TAD_PLUGIN_TRACE"

log = logging.getLogger("tad_plugin.hooks")

_T = TypeVar("_T")


class HookError(TADError, RuntimeError):
    """No registered plugin produced a result for a hook, or a result broke the hook's contract."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0", "false", "no")


def get_plugin_manager(default: object | None = None, load_entrypoints: bool | None = None,
                       blocked: Iterable[str] = ()) -> pluggy.PluginManager:
    """Build the plugin manager with TAD's hooks.

    Steps: add the specs of :mod:`tad_plugin.hookspecs`; block ``blocked`` plus the names in
    ``$TAD_PLUGIN_BLOCKED``; register TAD's implementation under the name ``tad``; load third-party
    plugins from the ``tad_plugin`` entry-point group (they register after ``tad`` and so are called
    first, overriding it); finally ``check_pending()`` rejects implementations of unknown hooks.

    Args:
        default: the object registered as ``tad``; ``None`` means ``TrustAwareDiversion()`` with its
            documented defaults.
        load_entrypoints: load entry-point plugins; ``None`` means yes unless
            ``$TAD_PLUGIN_DISABLE_AUTOLOAD`` is set.
        blocked: plugin names never to register (e.g. ``["tad"]`` to run only your own plugin).

    Raises:
        pluggy.PluginValidationError: a plugin implements an unknown hook or takes an argument the
            spec does not have.
    """
    from .tad import TrustAwareDiversion

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    names = [n.strip() for n in os.environ.get(BLOCKED_ENV, "").split(",") if n.strip()]
    for name in [*names, *blocked]:
        pm.set_blocked(name)
    pm.register(default if default is not None else TrustAwareDiversion(), name="tad")
    if load_entrypoints if load_entrypoints is not None else not _env_flag(DISABLE_AUTOLOAD_ENV):
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    pm.check_pending()
    if _env_flag(TRACE_ENV):
        pm.add_hookcall_monitoring(
            lambda name, impls, kwargs: log.info("hook %s -> %s", name, [i.plugin_name for i in impls]),
            lambda outcome, name, impls, kwargs: log.info("hook %s returned %s", name,
                                                          type(outcome.get_result()).__name__),
        )
    return pm


class TADHooks:
    """Typed calls of the hooks, for host code and type checkers.

    ``TADHooks()`` builds its own manager with :func:`get_plugin_manager`; pass ``pm`` to share one.
    Each method raises :class:`HookError` if every implementation deferred (returned ``None``).
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()

    def filter_dataset(self, losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> TrustSplit:
        """See :func:`tad_plugin.hookspecs.filter_dataset`."""
        out = self.pm.hook.filter_dataset(losses=losses, labels=labels, num_classes=num_classes)
        return self._check("filter_dataset", out, TrustSplit)

    def filter_dataset_batch(self, losses: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[TrustSplit]:
        """The division of E experts at once: :func:`tad_plugin.hookspecs.filter_dataset_batch` when every
        plugin implementing ``filter_dataset`` implements it too and one of them answers, else
        ``filter_dataset`` row by row (so a plugin that only implements the per-expert hook keeps deciding).

        Args:
            losses: float [E, N]; labels: int64 [E, N]; num_classes: C.

        Returns:
            E :class:`TrustSplit`, entry ``e`` for row ``e``.
        """
        if losses.dim() != 2 or labels.shape != losses.shape:
            raise HookError(f"filter_dataset_batch takes losses and labels [E, N], got {tuple(losses.shape)} and "
                            f"{tuple(labels.shape)}")
        return self._batch_or_rows(
            "filter_dataset", losses.shape[0], TrustSplit,
            lambda: self.pm.hook.filter_dataset_batch(losses=losses, labels=labels, num_classes=num_classes),
            lambda e: self.filter_dataset(losses[e], labels[e], num_classes))

    def expert_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """See :func:`tad_plugin.hookspecs.expert_loss`."""
        out = self._check("expert_loss", self.pm.hook.expert_loss(logits=logits, targets=targets),
                          torch.Tensor)
        if out.dim() != 0:
            raise HookError(f"expert_loss must return a scalar tensor, got shape {tuple(out.shape)}")
        return out

    def recalibrate(self, features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                    anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                    num_classes: int) -> Recalibration:
        """See :func:`tad_plugin.hookspecs.recalibrate`."""
        out = self.pm.hook.recalibrate(features=features, labels=labels, trusted=trusted,
                                       anchor_features=anchor_features, anchor_labels=anchor_labels,
                                       num_classes=num_classes)
        return self._check("recalibrate", out, Recalibration)

    def recalibrate_batch(self, features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor,
                          anchor_features: torch.Tensor, anchor_labels: torch.Tensor,
                          num_classes: int) -> list[Recalibration]:
        """The recalibration of E experts at once: :func:`tad_plugin.hookspecs.recalibrate_batch` when every
        plugin implementing ``recalibrate`` implements it too and one of them answers, else ``recalibrate`` row
        by row (a row whose labels and trusted space equal the first row's reuses its result).

        Args:
            features: float [N, D]; labels: int64 [E, N]; trusted: bool [E, N]; anchor_features: float [A, D];
            anchor_labels: int64 [A]; num_classes: C.

        Returns:
            E :class:`Recalibration`, entry ``e`` for row ``e``.
        """
        if labels.dim() != 2 or trusted.shape != labels.shape:
            raise HookError(f"recalibrate_batch takes labels and trusted [E, N], got {tuple(labels.shape)} and "
                            f"{tuple(trusted.shape)}")
        done: list[Recalibration] = []  # the rows so far: a row like the first reuses its result
        like_first: list[bool] = []

        def row(e: int) -> Recalibration:
            if not like_first:  # one host read, on the row-by-row path only
                like_first.extend(((labels == labels[0]).all(1) & (trusted == trusted[0]).all(1)).tolist())
            done.append(done[0] if e > 0 and like_first[e] else
                        self.recalibrate(features, labels[e], trusted[e], anchor_features, anchor_labels, num_classes))
            return done[-1]

        return self._batch_or_rows(
            "recalibrate", labels.shape[0], Recalibration,
            lambda: self.pm.hook.recalibrate_batch(features=features, labels=labels, trusted=trusted,
                                                   anchor_features=anchor_features, anchor_labels=anchor_labels,
                                                   num_classes=num_classes),
            row)

    def _batch_or_rows(self, name: str, rows: int, kind: type[_T], batched: Callable[[], Any],
                       row: Callable[[int], _T]) -> list[_T]:
        """``name``'s batched hook (``batched()``) when every plugin implementing ``name`` implements
        ``<name>_batch`` too and one of them answers (checked: ``rows`` results of type ``kind``), else ``row(e)`` for
        each row ``e`` in order."""
        per_row = {id(impl.plugin) for impl in getattr(self.pm.hook, name).get_hookimpls()}
        with_batch = {id(impl.plugin) for impl in getattr(self.pm.hook, f"{name}_batch").get_hookimpls()}
        out = batched() if per_row <= with_batch else None
        if out is None:
            return [row(e) for e in range(rows)]
        if not isinstance(out, Sequence) or len(out) != rows or not all(isinstance(r, kind) for r in out):
            raise HookError(f"{name}_batch must return a sequence of {rows} {kind.__name__} (one per row), got "
                            f"{type(out).__name__}")
        return list(out)

    def notify_division(self, *, expert: int, epoch: int, split: TrustSplit, labels: torch.Tensor,
                        trusted: torch.Tensor, predictions: torch.Tensor | None) -> None:
        """Tell every listener of a division: :func:`tad_plugin.hookspecs.on_division`."""
        self.pm.hook.on_division(expert=expert, epoch=epoch, split=split, labels=labels, trusted=trusted,
                                 predictions=predictions)

    def notify_recalibration(self, *, expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor,
                             previous_labels: torch.Tensor, previous_trusted: torch.Tensor,
                             predictions: torch.Tensor | None) -> None:
        """Tell every listener of a recalibration: :func:`tad_plugin.hookspecs.on_recalibration`."""
        self.pm.hook.on_recalibration(expert=expert, epoch=epoch, labels=labels, trusted=trusted,
                                      previous_labels=previous_labels, previous_trusted=previous_trusted,
                                      predictions=predictions)

    @staticmethod
    def _check(name: str, out: object, kind: type[_T]) -> _T:
        if out is None:
            raise HookError(f"no registered plugin implements {name!r} (all deferred); register one, "
                            f"or leave TAD's default plugin 'tad' unblocked")
        if not isinstance(out, kind):
            raise HookError(f"{name} returned {type(out).__name__}, expected {kind.__name__}")
        return out
