"""Test settings: third-party entry-point plugins installed on the machine must not leak into tests, and
the many tiny tensor ops of the CPU tests run on one thread (two threads on a busy 2-core machine are
far slower)."""

import os

import torch

os.environ.setdefault("TAD_PLUGIN_DISABLE_AUTOLOAD", "1")
torch.set_num_threads(1)
