"""Timing helpers shared by the benchmark scripts (imported from beside them: ``python benchmarks/<script>.py``
puts this folder on ``sys.path``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from tad_plugin.engine.phases import synchronize as sync

__all__ = ["sync", "phase_timers"]


@contextlib.contextmanager
def phase_timers(phases: Sequence[tuple[Any, str, str]], device: torch.device,
                 seconds: dict[str, float]) -> Iterator[None]:
    """Within the block, wrap each ``(owner, attribute, phase)`` of ``phases`` (a function looked up on a module or
    class) so that each call adds its wall seconds, device work included, to ``seconds[phase]`` as it returns (the
    caller reads them per epoch); restored on exit."""
    saved = []
    for owner, name, phase in phases:
        fn = getattr(owner, name)
        saved.append((owner, name, fn))

        def timed(*args: Any, _fn: Callable[..., Any] = fn, _phase: str = phase, **kwargs: Any) -> Any:
            sync(device)
            t0 = time.perf_counter()
            out = _fn(*args, **kwargs)
            sync(device)
            seconds[_phase] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
