"""The ``tad`` commands in README.md and the guides (docs/*.md) parse as printed: every flag exists, every
choice is accepted, every ``--set`` key is a real setting and every config file they name exists. Nothing runs:
each command goes through the ``tad`` parser and, for the run commands, the run config it builds."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from tad_plugin import cli_audit
from tad_plugin.cli import build_parser
from tad_plugin.reproduce.grid import resolve_cells
from tad_plugin.runs import DEMO_CONFIG, config_from_args
from tad_plugin.upstream.cli import wrap_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_COMMANDS = ("run", "buffer", "distill", "eval", "demo")


def documented_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every ``tad ...`` line of the pages' bash blocks (also after ``pip install ... &&``
    or ``torchrun ... --no-python``; ``reproduction/reproduce_cifar10.py`` as ``tad reproduce``, the same runner),
    continuation lines joined; lines with placeholders (``...``, ``$VAR``, ``<x>``, ``a | b``) are left out: they
    are not meant to run as printed."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                line = re.sub(r"^(python3? -m pip .*?&& |torchrun .*?--no-python )", "", line)
                line = re.sub(r"^python3? reproduction/reproduce_cifar10\.py ", "tad reproduce ", line)
                if line.startswith("tad ") and not re.search(r"\.\.\.|\$|<|\|", line):
                    found.append((page.name, line))
    return found


COMMANDS = documented_commands()


def test_the_pages_hold_commands():
    pages = {"README.md", "gpus.md", "label-audit.md", "reproducing.md", "wrapping.md"}
    assert len(COMMANDS) >= 30 and pages <= {p for p, _ in COMMANDS}


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_documented_command_parses(page, command, monkeypatch):
    monkeypatch.chdir(ROOT)  # the pages' config paths are relative to the checkout
    args = build_parser().parse_args(shlex.split(command)[1:])
    for path in re.findall(r"examples/configs/\S+\.yaml", command):
        assert (ROOT / path).is_file(), f"{page} names {path}, which does not exist"
    if args.command in RUN_COMMANDS:
        config_from_args(args, DEMO_CONFIG if args.command == "demo" else None)
    elif args.command == "audit":
        sets = [*args.sets, f"tad.enabled={str(args.detector == 'tad').lower()}"]
        config_from_args(argparse.Namespace(**{**vars(args), "sets": sets}), cli_audit._base(args))
    elif args.command == "wrap":
        wrap_config(args)
    elif args.command == "reproduce" and args.cell:
        assert resolve_cells(args.cell)  # a renamed cell or pattern matching none stops here


def test_a_renamed_flag_key_or_cell_fails_the_check():
    """The check above can fail: an unknown flag, setting or cell stops it."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split("run --noise-ratio 0.4"))
    with pytest.raises(ValueError, match="no_such_key"):
        config_from_args(build_parser().parse_args(["run", "--set", "tad.no_such_key=1"]))
    with pytest.raises(SystemExit, match="no such cell"):
        resolve_cells(["mtt-ipc10-sym45-*"])
