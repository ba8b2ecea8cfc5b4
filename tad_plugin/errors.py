"""The base class of the errors a user can fix (bad input, a mismatched resume, a missing file).

``tad`` prints a :class:`TADError` as one line (``tad <command>: error: <message>``) and exits with 2;
any other exception is a programming error and keeps its traceback. Each subclass also derives from the
builtin it has always been (``ValueError``, ``RuntimeError``, ...), so existing ``except`` clauses still match.
"""

from __future__ import annotations

import errno

__all__ = ["TADError", "os_error_text"]


class TADError(Exception):
    """A fault in the user's input, files or environment; the message names the problem and the fix."""


def os_error_text(exc: OSError) -> str:
    """What ``tad`` says when the machine refuses a file operation: the cause, the file, and the fix for a full
    disk, a quota, a read-only file system or missing permissions."""
    fixes = {errno.ENOSPC: "free space there or choose another --out", errno.EDQUOT: "free space there or choose "
             "another --out", errno.EROFS: "choose a writable --out", errno.EACCES: "choose a folder you may write "
             "to (--out) or fix its permissions", errno.EPERM: "choose a folder you may write to (--out)"}
    text = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) not in text:
        text += f": {exc.filename}"
    fix = fixes.get(exc.errno) if exc.errno is not None else None
    return f"{text}; {fix}" if fix else text
