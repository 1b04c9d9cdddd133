"""Shared test set-up: JAX backend unless a test says otherwise, and a CLI runner."""

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Eight virtual CPU devices for mesh tests; single-device code still uses the first one.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402
from support import run_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

CROSS_BACKEND = ("model", "training", "evaluation", "data", "test_generation.py", "base/test_backend.py")
"""Tests (folders and files under tests/) that are not about JAX alone: marked `backends`, they
also run on TensorFlow and PyTorch (tests/backends runs them there; sharding tests skip)."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(item.path).relative_to(TESTS).as_posix().startswith(CROSS_BACKEND):
            item.add_marker(pytest.mark.backends)


@pytest.fixture
def theseus_cli():
    """Call the installed `theseus` console script (falls back to `python -m theseus.cli`)."""

    def call(*args, **kwargs):
        return run_command([sys.executable, "-m", "theseus.cli", *map(str, args)], **kwargs)

    return call


@pytest.fixture
def recipe():
    def call(*args, **kwargs):
        return run_command([sys.executable, "-m", "theseus.recipes", *map(str, args)], **kwargs)

    return call
