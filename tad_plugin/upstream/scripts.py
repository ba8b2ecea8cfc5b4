"""Which scripts of each upstream repository ``tad wrap`` knows, and what it patches in them.

Every supported script builds its training set with ``get_dataset`` from one utils module and (buffer
scripts) trains each expert epoch with that module's ``epoch(mode, dataloader, net, optimizer,
criterion, args, aug, ...)``; the script imports both by name (``from utils import get_dataset, epoch``),
so replacing the module's attributes before the script runs reaches the script unchanged.
Paths are relative to the repository root, at the commits listed in ../shared/research/upstream.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["UpstreamScript", "SCRIPTS", "METHODS", "resolve_script"]

Role = Literal["buffer", "distill"]


@dataclass(frozen=True)
class UpstreamScript:
    """One upstream entry point.

    Attributes:
        role: ``"buffer"`` (trains experts: TAD's outer and inner loop run here) or ``"distill"``
            (consumes the buffer: TAD supplies the trusted, recalibrated real-image pool).
        utils_module: the module the script imports ``get_dataset`` (and ``epoch``) from.
    """

    role: Role
    utils_module: str


SCRIPTS: dict[str, dict[str, UpstreamScript]] = {
    # GeorgeCazenavette/mtt-distillation
    "mtt": {"buffer.py": UpstreamScript("buffer", "utils"),
            "distill.py": UpstreamScript("distill", "utils")},
    # AngusDujw/FTD-distillation (GSAM experts; the closure calls the criterion twice per step)
    "ftd": {"buffer/buffer_FTD.py": UpstreamScript("buffer", "utils.utils_gsam"),
            "distill/distill_FTD.py": UpstreamScript("distill", "utils.utils_baseline")},
    # NUS-HPC-AI-Lab/DATM (FTD's buffer; distill configured by yacs: DATM.py --cfg ../configs/...yaml)
    "datm": {"buffer/buffer_FTD.py": UpstreamScript("buffer", "utils.utils_gsam"),
             "distill/DATM.py": UpstreamScript("distill", "utils.utils_baseline"),
             "distill/DATM_tesla.py": UpstreamScript("distill", "utils.utils_baseline")},
    # NiaLiu/ATT
    "att": {"buffer_ATT.py": UpstreamScript("buffer", "utils_baseline"),
            "distill_ATT.py": UpstreamScript("distill", "utils_baseline")},
}
METHODS = tuple(SCRIPTS)


def resolve_script(method: str, repo: str | os.PathLike[str], script: str) -> tuple[Path, UpstreamScript]:
    """The absolute path of ``script`` (relative to ``repo``, or absolute inside it) and its entry.

    Raises:
        ValueError: an unknown method, or a script this method does not have (the message lists them).
        FileNotFoundError: the repository, the script file or the module it imports ``get_dataset`` from is
            missing (the message lists the files expected).
    """
    if method not in SCRIPTS:
        raise ValueError(f"unknown upstream method {method!r}; choose one of {', '.join(METHODS)}")
    root = Path(repo).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--repo {repo} is not a directory; give the root of your {method} checkout")
    path = (root / script).resolve()
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{script} lies outside --repo {root}; "
                         "give the script relative to the repository root") from None
    known = SCRIPTS[method]
    if rel not in known:
        raise ValueError(f"{rel} is not a {method} script tad wrap knows; known: {', '.join(known)}")
    utils = known[rel].utils_module.replace(".", "/")
    expected = [rel, f"{utils}.py"]
    missing = [name for name, there in ((rel, path.is_file()),
                                        (f"{utils}.py", (root / f"{utils}.py").is_file() or (root / utils).is_dir()))
               if not there]
    if missing:
        raise FileNotFoundError(f"--repo {root} is not a {method} checkout tad wrap knows: {' and '.join(expected)} "
                                f"are expected there, {', '.join(missing)} missing; give the root of your {method} "
                                f"checkout")
    return path, known[rel]
