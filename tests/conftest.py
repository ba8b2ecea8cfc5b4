"""Test settings: third-party entry-point plugins installed on the machine must not leak into tests."""

import os

os.environ.setdefault("TAD_PLUGIN_DISABLE_AUTOLOAD", "1")
