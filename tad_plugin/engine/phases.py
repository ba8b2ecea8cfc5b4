"""Where a stage's wall time goes: named phases, timed with the device's queued work included.

The expert trainer times its epochs' parts with a :class:`PhaseClock` and keeps the totals beside the experts
(:data:`PHASES_FILE` in the trajectory store), so a run record can say how much of the buffer stage was training,
testing and each part of TAD's per-epoch work.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..files import atomic_write_json

if TYPE_CHECKING:  # torch is imported where a device is waited for: the results pages read phases without it
    import torch

__all__ = ["PHASES_FILE", "DIVISION_AND_RECALIBRATION", "PhaseClock", "distill_parts", "expert_parts", "load_phases",
           "synchronize"]

#: The phase totals of a trajectory store, beside its manifest: ``{phase: {"seconds": float, "calls": int}}``.
PHASES_FILE = "phases.json"

F = TypeVar("F", bound=Callable[..., Any])

#: The part of the expert trainer's ``trust loop`` phase that is not timed on its own (tad_plugin.engine.experts).
DIVISION_AND_RECALIBRATION = "division and recalibration"
#: The expert trainer's phases timed inside its ``trust loop`` phase.
_TRUST_LOOP_PARTS = ("loss pass", "features", "anchors")


def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU), so that a host clock read after it counts that
    work."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Wall seconds and calls per named phase.

    Each timed block waits for ``device``'s queued work when it starts and when it ends (one
    ``torch.cuda.synchronize`` each on CUDA, nothing on the CPU), so the kernels a phase launches count in that
    phase and not in the next one that happens to wait for them. A block timed inside another counts in both:
    the owner of the clock documents which phases contain which. Time a phase per epoch or per call, never per
    step: each block is two host syncs.

    Args:
        device: the device whose work is waited for.
        start: totals to continue from (:meth:`as_dict`'s form, e.g. a resumed run's earlier totals).
    """

    def __init__(self, device: torch.device | str, start: dict[str, dict[str, float]] | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        for phase, entry in (start or {}).items():
            self.seconds[phase] = float(entry["seconds"])
            self.calls[phase] = int(entry["calls"])

    @contextlib.contextmanager
    def time(self, phase: str) -> Iterator[None]:
        """Add the block's wall seconds (device work included) and one call to ``phase``."""
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0
            self.calls[phase] = self.calls.get(phase, 0) + 1

    def timed(self, phase: str, fn: F) -> F:
        """``fn``, with each call timed as ``phase``."""
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.time(phase):
                return fn(*args, **kwargs)
        return call  # type: ignore[return-value]

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{phase: {"seconds": s, "calls": n}}`` in the order the phases were first timed."""
        return {p: {"seconds": round(s, 3), "calls": self.calls[p]} for p, s in self.seconds.items()}

    def save(self, path: str | Path) -> None:
        """Write :meth:`as_dict` to ``path`` as JSON, atomically."""
        atomic_write_json(self.as_dict(), path)


def load_phases(path: str | Path) -> dict[str, dict[str, float]] | None:
    """The phase totals written by :meth:`PhaseClock.save`, or None when ``path`` does not exist.

    Raises:
        ValueError: the file is not such a JSON object (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {str(p): {"seconds": float(e["seconds"]), "calls": int(e["calls"])} for p, e in data.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"{path} is not a phase-timing file ({err}); delete it, the next run writes a new one") \
            from None


def expert_parts(phases: dict[str, dict[str, float]]) -> dict[str, tuple[float, int]]:
    """The expert trainer's phase totals (:meth:`PhaseClock.as_dict`'s form) as parts that do not overlap:
    ``train``, ``test``, ``loss pass``, ``features``, ``anchors`` and :data:`DIVISION_AND_RECALIBRATION` (what
    is left of ``trust loop``), each ``(seconds, calls)``, in that order; a part that was never timed is left out.
    The parts add up to the buffer stage's timed seconds."""
    parts = {p: (phases[p]["seconds"], int(phases[p]["calls"])) for p in ("train", "test", *_TRUST_LOOP_PARTS)
             if p in phases}
    if "trust loop" in phases:
        inner = sum(phases[p]["seconds"] for p in _TRUST_LOOP_PARTS if p in phases)
        parts[DIVISION_AND_RECALIBRATION] = (max(phases["trust loop"]["seconds"] - inner, 0.0),
                                             int(phases["trust loop"]["calls"]))
    return parts


def distill_parts(distill: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """A run record's distill stage (``stages.distill``) as ``{"matching": (seconds, 0), "evaluations": (seconds,
    count)}``: its evaluations' recorded ``seconds`` and the rest of its time (the matching iterations and
    checkpoints). The time is the distillation loop's over every attempt (``loop_seconds``) where recorded, else
    the stage's wall time with its earlier attempts'; {} without either."""
    wall = distill.get("loop_seconds") or sum(distill.get(k) or 0 for k in ("wall_time_s", "earlier_wall_time_s"))
    if not isinstance(wall, (int, float)) or not wall:
        return {}
    evals = [e["seconds"] for e in distill.get("evaluations", []) if e.get("seconds") is not None]
    return {"matching": (wall - sum(evals), 0), "evaluations": (sum(evals), len(evals))}
