"""The per-run JSON record: what ran, on what, with which settings, how long, and what came out.

Every CLI run writes one ``result.json`` (atomically) with: the command line, the full config, the
seed, the git commit, the device name, the wall time and the results (accuracies, measured noise
rate, ...). Results are added as the run goes, and the file is rewritten after each stage, so an
interrupted run still leaves a valid record of the stages it finished. A resumed run (same file, same config)
starts from the earlier record: its stages and results stay until the resumed run records them again, and the
earlier attempts are listed, so a second interruption loses nothing the first run recorded.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json

__all__ = ["RunLog", "command_line", "provenance", "git_commit", "device_name"]

#: what a resumed record keeps of each earlier attempt
ATTEMPT_FIELDS = ("command", "started", "commit", "device", "wall_time_s")


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The commit to record: the environment variable ``TAD_PLUGIN_COMMIT`` when set (e.g.
    ``TAD_PLUGIN_COMMIT=$(git rev-parse HEAD)`` where the code was copied from: a copied checkout's ``.git`` can
    name an older commit than its files, as on the device machines), else the current git commit (with
    ``-dirty`` if the tree has changes), else None (outside a git checkout, e.g. installed from a wheel)."""
    if os.environ.get("TAD_PLUGIN_COMMIT"):
        return os.environ["TAD_PLUGIN_COMMIT"]
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def device_name(device: torch.device | str) -> str:
    """A human-readable name: the GPU model for CUDA devices, the CPU model otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line(argv: list[str]) -> str:
    """``argv`` as a command a user can type again (shell-quoted): ``python -m tad_plugin.cli ...`` when
    argv[0] is the CLI module's file (``python -m`` puts the file's path there), ``tad ...`` for the console
    script, otherwise argv as it is."""
    head = Path(argv[0]) if argv else Path()
    if head.parts[-2:] == ("tad_plugin", "cli.py"):
        argv = ["python", "-m", "tad_plugin.cli", *argv[1:]]
    elif head.name == "tad":
        argv = ["tad", *argv[1:]]
    return shlex.join(argv)


def provenance(device: torch.device | str, seed: int, *, command: list[str] | None = None,
               commit: str | None = None) -> dict[str, Any]:
    """The fields every run or benchmark record starts with: ``command`` (``command``, default the running
    script as ``<python> argv...``, through :func:`command_line`), ``seed``, ``commit`` (default
    :func:`git_commit`), ``device`` (:func:`device_name`) and ``torch`` (its version)."""
    argv = command if command is not None else [Path(sys.executable).name, *sys.argv]
    return {"command": command_line(argv), "seed": seed, "commit": commit or git_commit(),
            "device": device_name(device), "torch": torch.__version__}


class RunLog:
    """Accumulates a run's record and writes it to ``path`` as JSON.

    Args:
        path: the JSON file to (re)write.
        config: the run's config as a plain dict.
        seed: the run seed.
        device: the torch device the run uses.
        command: the command line; defaults to ``sys.argv``.
        enabled: False makes :meth:`write` a no-op (the ranks other than 0 of a distributed run).

    When ``path`` already holds a record of the same ``config`` (a resumed run), its ``stages`` and ``results``
    are kept until recorded again (a stage recorded again keeps the earlier attempts' seconds as
    ``earlier_wall_time_s``), and ``attempts`` lists each earlier attempt's command, start, commit, device and
    wall time. Another config, or a file that is not such a record, starts a new record.
    """

    def __init__(self, path: str | os.PathLike[str], config: dict[str, Any], seed: int,
                 device: torch.device | str, command: list[str] | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._start = time.perf_counter()
        self.record: dict[str, Any] = {
            **provenance(device, seed, command=command if command is not None else sys.argv),
            "config": config,
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_time_s": 0.0,
            "stages": {},
            "results": {},
        }
        self._earlier: dict[str, float] = {}  # stage -> seconds the earlier attempts spent in it
        earlier = self._earlier_record(config)
        if earlier is not None:
            self.record["attempts"] = [*earlier.get("attempts", []),
                                       {key: earlier[key] for key in ATTEMPT_FIELDS if key in earlier}]
            self.record["stages"] = dict(earlier["stages"])
            self.record["results"] = dict(earlier["results"])
            self._earlier = {name: float(st.get("wall_time_s", 0.0)) + float(st.get("earlier_wall_time_s", 0.0))
                             for name, st in earlier["stages"].items() if isinstance(st, dict)}

    def _earlier_record(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The record at :attr:`path` when it is one of a run with ``config``, else None."""
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        same = json.loads(json.dumps(config, default=str))  # as the file holds it (tuples as lists, ...)
        ok = (isinstance(old, dict) and old.get("config") == same and isinstance(old.get("stages"), dict)
              and isinstance(old.get("results"), dict))
        return old if ok else None

    def stage(self, name: str, seconds: float, **info: Any) -> None:
        """Record a finished stage (its wall time and any details) and rewrite the file."""
        entry: dict[str, Any] = {"wall_time_s": round(seconds, 3), **info}
        if self._earlier.get(name):
            entry["earlier_wall_time_s"] = round(self._earlier[name], 3)
        self.record["stages"][name] = entry
        self.write()

    def result(self, **values: Any) -> None:
        """Add result values (accuracies, noise rate, ...) and rewrite the file."""
        self.record["results"].update(values)
        self.write()

    def write(self) -> Path:
        """Write the record now (wall time so far included); returns the path."""
        self.record["wall_time_s"] = round(time.perf_counter() - self._start, 3)
        if self.enabled:
            atomic_write_json(self.record, self.path)
        return self.path
