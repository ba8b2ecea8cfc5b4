"""Test settings: third-party entry-point plugins installed on the machine must not leak into tests, and
the many tiny tensor ops of the CPU tests run on one thread (two threads on a busy 2-core machine are
far slower)."""

import os

import pytest
import torch

os.environ.setdefault("TAD_PLUGIN_DISABLE_AUTOLOAD", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """The output folder of ``tad demo --quick`` (digits, both arms; ~20 s on the CPU), shared by the tests
    that read a finished run."""
    from tad_plugin.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def load_script():
    """``load_script(path)``: the module of a script outside the package (an example or benchmark), imported by path."""
    import importlib.util

    def load(path):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def install_distribution(tmp_path, monkeypatch):
    """``install_distribution(name, entry_points)``: a third-party distribution on sys.path (its modules written into
    ``tmp_path`` by the test), declaring ``entry_points`` (the text of its entry_points.txt)."""

    def install(name, entry_points):
        dist = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(entry_points)
        monkeypatch.syspath_prepend(str(tmp_path))

    return install


@pytest.fixture
def ctrl_c_after_first_expert(monkeypatch):
    """Ctrl-C right after the first expert of a run is saved (as a user interrupting a long run)."""
    from tad_plugin.engine.trajectories import TrajectoryStore

    save = TrajectoryStore.save_expert

    def interrupt_after_one(self, record):
        save(self, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrajectoryStore, "save_expert", interrupt_after_one)
