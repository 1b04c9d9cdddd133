"""Which Keras backend a job runs on: the `topology/backend` key, `--backend`, or `KERAS_BACKEND`.

Keras picks its backend once, when it is first imported, so the choice has to be made
before that: the CLI and `python -m theseus.recipes` read it from the flags, the overrides
and the config file first (`chosen`), then `select` it, and only then import the rest
of theseus. A job built later checks that Keras is running what its config asks for.
This module must not import Keras.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Any

from theseus.config import ConfigError, field, load_yaml

BACKENDS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
"""Keras backend name -> the package it needs."""

KEY = "topology/backend"


@dataclasses.dataclass
class Backend:
    """The `topology/backend` key, which every job has (`theseus.experiments.runs.table` adds it)."""

    backend: str | None = field(
        KEY, default=None, help="Keras backend: jax, tensorflow or torch; null = env KERAS_BACKEND, else jax"
    )

    def __post_init__(self) -> None:
        if self.backend is not None:
            check(self.backend)


def chosen(flag: str | None, overrides: dict[str, Any], config_path: str | None = None) -> str | None:
    """The backend a command line asks for, with `--backend` folded into `overrides` as the
    `topology/backend` override it is (so the run's config records it); an override wins
    over the config file."""
    if flag is not None:
        if overrides.get(KEY, flag) != flag:
            raise ConfigError(f"--backend {flag} contradicts the override {KEY}={overrides[KEY]}")
        overrides[KEY] = flag
    if KEY in overrides:
        return overrides[KEY]
    if config_path is not None and os.path.isfile(config_path):
        return load_yaml(config_path).get(KEY)
    return None


def select(name: str | None) -> None:
    """Make `name` Keras's backend (None: keep `KERAS_BACKEND`, or jax); call before Keras loads."""
    if name is not None:
        check(name)  # a known, installed backend, and not too late to pick it
        os.environ["KERAS_BACKEND"] = name
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        _import_tensorflow_quietly()


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and start its devices with file descriptor 2 closed off.

    TensorFlow's C++ start-up writes INFO and ERROR lines (oneDNN, "Could not find cuda
    drivers", a failed `cuInit` on a machine without a GPU) straight to stderr before absl
    logging is set up; no environment variable silences them (TF_CPP_MIN_LOG_LEVEL does
    not, in 2.21). A bad command line must still print one line, so they go to /dev/null.
    Python's own errors are unaffected: an ImportError still surfaces after the restore.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow

        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check(name: str) -> None:
    """A ConfigError unless `name` is a backend that is installed and is the one Keras runs on."""
    if name not in BACKENDS:
        raise ConfigError(f"config key '{KEY}' must be one of {sorted(BACKENDS)}, got {name!r}")
    _check_installed(name)
    running = _running()
    if running is not None and running != name:
        raise ConfigError(
            f"{KEY}={name}, but Keras was already imported with the {running} backend in this process; "
            f"choose the backend before Keras is imported (KERAS_BACKEND={name}, --backend {name}, "
            f"or the config key through the theseus CLI)"
        )


def _check_installed(name: str) -> None:
    if name in BACKENDS and importlib.util.find_spec(BACKENDS[name]) is None:
        raise ConfigError(f"backend {name!r} is not installed here (pip install {BACKENDS[name]})")


def _running() -> str | None:
    """The backend of an already imported Keras, else None."""
    if "keras" not in sys.modules:
        return None
    return sys.modules["keras"].backend.backend()
