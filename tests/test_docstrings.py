"""Docstrings and option help state contracts: no results paths, no measured percentages, no GPU models.

Measurements belong to the results pages that own them (results/, benchmarks/results/); a docstring that cites
one goes stale the day the measurement is redone.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SOURCES = sorted([*(ROOT / "tad_plugin").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])

#: a path into the records, a percentage (a setting such as "40% noise" is written as a rate, 0.4, or
#: named in words), a GPU model (a measurement's device)
FORBIDDEN = {
    "a results path": re.compile(r"\b(examples/)?(benchmarks/)?results/"),
    "a percentage": re.compile(r"\d+(\.\d+)?\s?%"),
    "a GPU model": re.compile(r"\b[HA]100\b|\bH200\b"),
}


def texts(path: Path):
    """(line, text) of every docstring and every ``help=`` string of ``path``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "help":
                    parts = [n.value for n in ast.walk(kw.value)
                             if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                    if parts:
                        yield kw.value.lineno, "".join(parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstrings_and_help_cite_no_measurements(path):
    found = [f"{path.relative_to(ROOT)}:{line}: {what}: {match.group(0)!r}"
             for line, text in texts(path) for what, pattern in FORBIDDEN.items()
             for match in [pattern.search(text)] if match]
    assert not found, "\n".join(found)


def test_the_check_catches_a_measurement(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f():\n    """Fast: 0.2 s on an H100 (results/x.json), 93.1% precise."""\n')
    found = {what for _, text in texts(bad) for what, pattern in FORBIDDEN.items() if pattern.search(text)}
    assert found == set(FORBIDDEN)
