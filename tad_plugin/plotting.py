"""The plumbing every figure of the library shares: matplotlib on the Agg backend (no display needed), and
a finished figure written atomically as a PNG. matplotlib is optional (``pip install 'tad_plugin[plot]'``)."""

from __future__ import annotations

import os
from typing import Any

from .files import atomic_write

__all__ = ["pyplot", "save_png"]


def pyplot(purpose: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend. Raises ImportError naming ``purpose`` (e.g. "the trust-report
    plot") and the extra to install when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"{purpose} needs matplotlib: pip install 'tad_plugin[plot]'") from exc
    return plt


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Lay ``fig`` out tightly, write it to ``path`` as a PNG through :func:`~tad_plugin.files.atomic_write`,
    and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
