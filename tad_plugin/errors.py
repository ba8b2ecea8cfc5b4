"""The base class of the errors a user can fix (bad input, a mismatched resume, a missing file).

``tad`` prints a :class:`TADError` as one line (``tad <command>: error: <message>``) and exits with 2;
any other exception is a programming error and keeps its traceback. Each subclass also derives from the
builtin it has always been (``ValueError``, ``RuntimeError``, ...), so existing ``except`` clauses still match.
"""

from __future__ import annotations

import errno

__all__ = ["TADError", "os_error_text", "user_error_text"]


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


def out_of_memory_text(exc: BaseException) -> str:
    """What ``tad`` says when the GPU runs out of memory: torch's first line and the settings that lower the
    memory without changing what a run computes (finished stages and experts resume when it is re-run)."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
    return (f"out of GPU memory ({said}). Settings that need less without changing the results: "
            "buffer.eval_batch_size (images per loss or test pass) for the experts; distill.inner_grad=compiled "
            "with distill.recompute_steps=true for distillation (one unrolled step's graph at a time). Also "
            "buffer.experts_per_group (experts trained in one batched pass; TAD's per-sample loss passes grow with "
            "it), which changes the random draws each expert gets (equivalent experts, not identical ones). Other "
            "processes on the same GPU count too. Re-running resumes the finished stages and experts")


def no_compiler_text(exc: BaseException) -> str | None:
    """What ``tad`` says when ``torch.compile`` finds no working C++ compiler (it builds C++ kernels for the CPU):
    install one or run uncompiled, naming the settings; None when ``exc`` is another error."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if type(cause).__name__ == "InvalidCxxCompiler":
            return ("torch.compile found no working C++ compiler (it builds the CPU kernels in C++): install one "
                    "(e.g. g++), or run uncompiled: --set distill.inner_grad=explicit --set buffer.compile=false "
                    "--set eval.compile=false (the same values, slower)")
        seen.add(id(cause))
        cause = getattr(cause, "inner_exception", None) or cause.__cause__ or cause.__context__
    return None


def user_error_text(exc: BaseException) -> str | None:
    """The one line ``tad`` and the reproduction script say for a fault the user can fix, or None for a programming
    error (it keeps its traceback): a :class:`TADError` or ``ValueError`` (its message), a refused file operation
    (:func:`os_error_text`), GPU memory (:func:`out_of_memory_text`), no C++ compiler for ``torch.compile``
    (:func:`no_compiler_text`), a command's own ``SystemExit("message")``."""
    import torch

    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, str) else None
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return out_of_memory_text(exc)
    if isinstance(exc, OSError) and not isinstance(exc, TADError):
        return os_error_text(exc)
    if isinstance(exc, (TADError, ValueError)):
        return str(exc)
    return no_compiler_text(exc) if isinstance(exc, RuntimeError) else None
