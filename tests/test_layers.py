"""The package's structure as a checked contract (an import-linter "layers" contract, as a test that walks the
imports): core (tad_plugin/*.py) <- engine (tad_plugin/engine) <- adapters (adapters/, installed as
tad_plugin.adapters) <- wrap (tad_plugin/upstream) <- the command line; no module imports a higher layer, and
no import circle -- module-level and deferred (in-function) imports alike. Also: one exception base."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: the command line: argument parsing and the runs it dispatches to
CLI = {"tad_plugin.cli", "tad_plugin.cli_audit", "tad_plugin.cli_options", "tad_plugin.runs", "tad_plugin.features.cli",
       "tad_plugin.reproduce.cifar10", "tad_plugin.reproduce.grid", "tad_plugin.reproduce.running",
       "tad_plugin.reproduce.queue", "tad_plugin.reproduce.tables", "tad_plugin.reproduce.pages"}
LAYERS = ("core", "engine", "adapters", "wrap", "command line")


def _modules() -> dict[str, Path]:
    def name(path: Path, base: Path, package: str) -> str:
        parts = [package, *path.relative_to(base).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    out = {name(p, ROOT / "tad_plugin", "tad_plugin"): p for p in (ROOT / "tad_plugin").rglob("*.py")}
    out.update({name(p, ROOT / "adapters", "tad_plugin.adapters"): p for p in (ROOT / "adapters").rglob("*.py")})
    return out


MODULES = _modules()


def layer(module: str) -> int:
    if module in CLI:
        return 4
    for i, prefix in ((3, "tad_plugin.upstream"), (2, "tad_plugin.adapters"), (1, "tad_plugin.engine")):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return 0


def imported(module: str, path: Path) -> set[tuple[str, int]]:
    """The package's modules ``module`` imports (anywhere in the file), with the line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != module:
                found.add((target, node.lineno))
    return found


GRAPH = {m: imported(m, p) for m, p in MODULES.items()}


def test_the_walk_sees_the_package():
    assert len(MODULES) > 60 and {"tad_plugin.trust_loop", "tad_plugin.engine.experts", "tad_plugin.adapters.mtt",
                                  "tad_plugin.upstream.epoch", "tad_plugin.cli"} <= set(MODULES)
    assert "tad_plugin.trust_loop" in {t for t, _ in GRAPH["tad_plugin.engine.experts"]}  # relative imports resolved
    assert "tad_plugin.engine.config" in {t for t, _ in GRAPH["tad_plugin.runs"]}


def test_no_module_imports_a_higher_layer():
    wrong = [f"{MODULES[m].relative_to(ROOT)}:{line}: {m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
             for m, targets in GRAPH.items() for t, line in sorted(targets) if layer(t) > layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    edges = {m: {t for t, _ in targets} for m, targets in GRAPH.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for t in sorted(edges[m]):
            visit(t, [*path, m])
        done.add(m)

    for m in sorted(edges):
        visit(m, [])


def test_every_library_error_derives_from_one_base():
    from tad_plugin.errors import TADError

    classes = []
    for name in MODULES:
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass)
                    if issubclass(c, Exception) and not issubclass(c, Warning) and c.__module__ == name]
    assert len(classes) >= 8
    assert [c.__qualname__ for c in classes if not issubclass(c, TADError)] == []
