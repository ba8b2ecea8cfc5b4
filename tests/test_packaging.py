"""The wheel installs tad_plugin (with adapters/ mapped to tad_plugin.adapters) and nothing top-level else."""

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_pyproject_holds_only_the_build_system_and_checker_tables():
    """Metadata and options have one home, setup.cfg: pyproject.toml holds the build system and the settings of
    ruff and mypy, which setup.cfg cannot hold (ruff reads only TOML)."""
    text = (ROOT / "pyproject.toml").read_text()
    tables = [line for line in text.splitlines() if line.startswith("[")]
    assert tables[0] == "[build-system]"
    assert all(t.strip("[]").startswith(("tool.ruff", "tool.mypy")) for t in tables[1:]), tables


def test_setup_cfg_uses_underscore_keys_and_alternative_faiss_extras():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for section in cfg.sections():
        for key in cfg[section]:
            assert "-" not in key or section.startswith("options.extras_require"), (section, key)
    extras = cfg["options.extras_require"]
    assert "faiss-cpu" in extras["faiss-cpu"] and "faiss-gpu" in extras["faiss-gpu"]
    assert "faiss" not in cfg["options"]["install_requires"]


@pytest.mark.skipif(not (ROOT / "setup.cfg").exists(), reason="not a source checkout")
def test_wheel_contents(tmp_path):
    import importlib.util

    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed")
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:  # bdist_wheel: setuptools >= 70.1 or wheel
        pytest.skip(f"setuptools {setuptools.__version__} without the wheel package cannot build wheels offline")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("tad_plugin-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"tad_plugin"}
    assert "tad_plugin/adapters/__init__.py" in names
    assert "tad_plugin/configs/demo.yaml" in names  # `tad demo` reads its settings from it
    # `tad reproduce`: the CIFAR-10 grid runner and the base configs it builds the cells from
    assert {"tad_plugin/reproduce/cifar10.py", "tad_plugin/reproduce/grid.py", "tad_plugin/reproduce/running.py",
            "tad_plugin/reproduce/queue.py", "tad_plugin/reproduce/tables.py", "tad_plugin/reproduce/pages.py",
            "tad_plugin/configs/cifar10_sym.yaml", "tad_plugin/configs/cifar10_asym.yaml",
            "tad_plugin/configs/cifar10n_worst.yaml"} <= set(names)
    assert not any(n.startswith("adapters/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tad = tad_plugin.cli:main" in entry_points


def test_ci_installs_and_runs_what_the_readme_says():
    """.ci/run runs the README's test command, whose extras include matplotlib's (``plot``): the suite's
    figure tests run instead of skipping; and the README's lint and type-check commands, whose tools come with
    the same install (``lint``); the cleanlab plugin's tests need its extra (``cleanlab``)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    readme = [line for line in lines if "pytest -q" in line][0]
    install, test = (part.split("#")[0].strip() for part in readme.split("&&"))
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
    extras = set(install.split("[")[1].split("]")[0].split(","))
    assert {"plot", "lint", "cleanlab"} <= extras  # the figure, lint and cleanlab-plugin tests run, none skip
    checks = [line for line in lines if "ruff check" in line][0]
    commands = [part.split("#")[0].strip() for part in checks.split("&&")]
    assert commands == ["python3 -m ruff check", "python3 -m mypy"]
    assert all(c in ci for c in commands)
