"""Which Keras backend a job runs on: the `topology/backend` key, `--backend`, or `KERAS_BACKEND`.

Keras picks its backend once, when it is first imported, so the choice has to be made
before that: the CLI and `python -m theseus.recipes` read it from the flags, the overrides
and the config file first (`chosen`), then `select` it, and only then import the rest
of theseus. A job built later checks that Keras is running what its config asks for.
`select` also keeps the frameworks' start-up lines off stderr (`quiet`) unless `--verbose`.
This module imports Keras only in `import_keras_lean`, for the commands that just read configs.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.abc
import importlib.util
import logging
import os
import sys
from typing import Any

from theseus.config import ConfigError, field, load_yaml

BACKENDS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
"""Keras backend name -> the package it needs."""

KEY = "topology/backend"

KERAS_EXTRAS = ("IPython", "sklearn", "pandas", "pyarrow", "matplotlib", "h5py", "huggingface_hub", "requests")
"""What Keras imports at start whenever it is installed, for features that listing or configuring
jobs never uses (its IPython file editor, the scikit-learn wrappers, DataFrame inputs, plots,
legacy .h5 files, the Hub, `RemoteMonitor`): about 80% of `theseus jobs`'s time (`benchmarks/cli_time.py`)."""


AUTO = "auto"

ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
"""Device files of GPUs (NVIDIA, AMD) and TPUs: where one exists, `auto` leaves the run on JAX."""


@dataclasses.dataclass
class Backend:
    """The `topology/backend` key, which every job has (`theseus.experiments.runs.table` adds it)."""

    backend: str | None = field(
        KEY,
        default=AUTO,
        help="Keras backend: jax, tensorflow, torch, or auto (null): env KERAS_BACKEND when set, else torch "
        "for a one-process CPU run without a mesh (the fastest there: benchmarks/README.md), else jax",
    )

    def __post_init__(self) -> None:
        if self.backend not in (None, AUTO):
            check(self.backend)


def chosen(
    flag: str | None, overrides: dict[str, Any], config_path: str | None = None, pick: bool = True
) -> str | None:
    """The backend a command line asks for, with `--backend` folded into `overrides` as the
    `topology/backend` override it is (so the run's config records it); an override wins
    over the config file, and `auto` (or no choice) is `automatic`'s pick, or None without `pick`
    (for commands that only read job classes, which any backend serves)."""
    if flag is not None:
        if overrides.get(KEY, flag) != flag:
            raise ConfigError(f"--backend {flag} contradicts the override {KEY}={overrides[KEY]}")
        overrides[KEY] = flag
    settings = load_yaml(config_path) if config_path is not None and os.path.isfile(config_path) else {}
    settings = {**settings, **overrides}
    name = settings.get(KEY)
    if name not in (None, AUTO):
        return name
    return automatic(settings) if pick else None


def automatic(settings: dict[str, Any]) -> str:
    """The backend `auto` runs a job with these `topology/...` settings on: the one Keras already
    runs, or else KERAS_BACKEND when the user set it; else torch for one process on a CPU with no
    mesh, where PyTorch's eager kernels beat XLA's CPU code at the sizes a CPU trains
    (`benchmarks/README.md`); else JAX, the backend that shards over meshes, spans processes
    and compiles for accelerators."""
    import theseus

    if _running() is not None:
        return _running()
    if theseus.KERAS_BACKEND_GIVEN:
        return os.environ["KERAS_BACKEND"]
    return "torch" if _one_cpu_process(settings) and importlib.util.find_spec("torch") else "jax"


def _one_cpu_process(settings: dict[str, Any]) -> bool:
    """No mesh, no other process and no accelerator: a run that only one device could serve."""
    mesh = str(settings.get("topology/strategy", "dp")) != "dp" or _count(settings.get("topology/devices")) > 1
    processes = bool(settings.get("topology/coordinator")) or _count(settings.get("topology/num_processes")) > 1
    processes = processes or any(name.startswith("KERAS_DISTRIBUTION_") for name in os.environ)
    virtual_devices = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    accelerator = any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)
    return not (mesh or processes or virtual_devices or accelerator)


def _count(value: Any) -> int:
    """A device or process count as the config gives it; 0 for none (a wrong one is reported later, by the job)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def select(name: str | None, verbose: bool = False) -> None:
    """Make `name` Keras's backend (None: keep `KERAS_BACKEND`, which `import theseus` defaults to
    jax), and keep the backends' start-up lines off stderr unless `verbose` (`quiet`); call before
    Keras loads."""
    if name is not None:
        check(name)  # a known, installed backend, and not too late to pick it
        os.environ["KERAS_BACKEND"] = name
    if not verbose:
        quiet()


def quiet() -> None:
    """Keep the frameworks' start-up lines off stderr; call before they are imported.

    TensorFlow is imported whenever a run needs it (its backend, tfds data, keras-hub), and its
    C++ start-up writes lines ("Could not find cuda drivers", twice; a failed `cuInit`) to
    stderr before absl logging is set up, which no environment variable silences (not
    TF_CPP_MIN_LOG_LEVEL, in 2.21): its import, whenever it comes, runs with file descriptor
    2 closed off (`_QuietTensorFlow`). JAX logs "Unable to initialize backend ..." and "falling
    back to cpu" through Python logging. A user's own settings win; Python's errors, theseus's
    own lines and TensorFlow's later errors still show.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC under TensorFlow and multi-host JAX
    jax_start = logging.getLogger("jax._src.xla_bridge")
    if jax_start.level == logging.NOTSET:
        jax_start.setLevel(logging.ERROR)
    if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, but imports it (and lists its devices, whose
    start-up logs too) with stderr sent to /dev/null. Other modules pass through untouched."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = functools.partial(_exec_quietly, spec.loader.exec_module)
                return spec
        return None


def _exec_quietly(exec_module, module) -> None:
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        exec_module(module)
        module.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed` (Python's, NumPy's, Keras's and torch's generators), seeding
    TensorFlow only where it is the backend or already loaded.

    Keras imports TensorFlow to seed it whenever it is installed: on JAX or torch that costs a run
    seconds at start and more at its exit (TensorFlow's threads wind down), for a framework the run
    never uses; theseus's data pipeline draws no TensorFlow random numbers. Keras decides by its lazy
    module's `available`, which is answered `False` for the call.
    """
    import keras
    from keras.src.utils.module_utils import tensorflow

    unused = "tensorflow" not in sys.modules and keras.backend.backend() != "tensorflow"
    if not unused or tensorflow._available is not None:
        return keras.utils.set_random_seed(seed)
    tensorflow._available = False
    try:
        keras.utils.set_random_seed(seed)
    finally:
        tensorflow._available = None  # still importable later, by whatever needs it


def import_keras_lean() -> None:
    """Import Keras as if `KERAS_EXTRAS` and the other backends' frameworks were not installed,
    for `theseus jobs` and `configure`, which read job classes and write YAML but never train.

    Keras imports each of those in a `try`/`except ImportError`, so it runs without them; they
    read as absent only while Keras loads (a `None` in `sys.modules`, Python's way to say "not
    installed"), so later imports, a plugin's included, find them as usual.
    """
    if "keras" in sys.modules:
        return
    running = os.environ.get("KERAS_BACKEND", "jax")
    frameworks = tuple(package for name, package in BACKENDS.items() if name != running)
    absent = [name for name in KERAS_EXTRAS + frameworks if name not in sys.modules]
    sys.modules.update(dict.fromkeys(absent))
    try:
        import keras  # noqa: F401
    finally:
        for name in absent:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


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
