"""Timing helpers shared by the benchmark scripts (imported from beside them: ``python benchmarks/<script>.py``
puts this folder on ``sys.path``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from tad_plugin.engine.phases import PhaseClock
from tad_plugin.engine.phases import synchronize as sync

__all__ = ["sync", "phase_timers"]


@contextlib.contextmanager
def phase_timers(phases: Sequence[tuple[Any, str, str]], device: torch.device,
                 seconds: dict[str, float]) -> Iterator[None]:
    """Within the block, wrap each ``(owner, attribute, phase)`` of ``phases`` (a function looked up on a module or
    class) so that each call adds its wall seconds, device work included, to ``seconds[phase]``; restored on exit."""
    clock = PhaseClock(device)
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in phases]
    for (owner, name, fn), (_, _, phase) in zip(saved, phases):
        setattr(owner, name, clock.timed(phase, fn))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        for phase, spent in clock.seconds.items():
            seconds[phase] = seconds.get(phase, 0.0) + spent
