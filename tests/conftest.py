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
