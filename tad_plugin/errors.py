"""The base class of the errors a user can fix (bad input, a mismatched resume, a missing file).

``tad`` prints a :class:`TADError` as one line (``tad <command>: error: <message>``) and exits with 2;
any other exception is a programming error and keeps its traceback. Each subclass also derives from the
builtin it has always been (``ValueError``, ``RuntimeError``, ...), so existing ``except`` clauses still match.
"""

from __future__ import annotations

__all__ = ["TADError"]


class TADError(Exception):
    """A fault in the user's input, files or environment; the message names the problem and the fix."""
