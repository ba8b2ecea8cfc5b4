"""tad_plugin: Trust-Aware Diversion (TAD) for trajectory-matching dataset distillation with noisy labels.

Public names (imported lazily, so ``import tad_plugin.data`` stays light):

* :func:`get_plugin_manager`, :class:`TADHooks`, :data:`hookimpl` -- the pluggy hook system;
* :class:`TrustAwareDiversion` -- TAD's implementation of the hooks (an ordinary plugin);
* :class:`TrustSplit`, :class:`Recalibration` -- what the hooks return;
* :class:`TrustLoop`, :class:`Schedule` -- TAD's dual loop around any training loop (:mod:`tad_plugin.trust_loop`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "hookimpl": "hookspecs",
    "get_plugin_manager": "manager",
    "TADHooks": "manager",
    "HookError": "manager",
    "TrustAwareDiversion": "tad",
    "TrustSplit": "results",
    "Recalibration": "results",
    "TrustLoop": "trust_loop",
    "Schedule": "trust_loop",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .hookspecs import hookimpl
    from .manager import HookError, TADHooks, get_plugin_manager
    from .results import Recalibration, TrustSplit
    from .tad import TrustAwareDiversion
    from .trust_loop import Schedule, TrustLoop


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'tad_plugin' has no attribute {name!r}")
