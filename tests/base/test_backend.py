"""Choosing the Keras backend: from the command line and config, before Keras loads; a
clear error when it is too late or the backend is missing. (The backends themselves
run in tests/backends.)"""

import logging
import os
import subprocess
import sys

import keras
import pytest

from theseus.base import backend
from theseus.config import ConfigError
from theseus.experiments.runs import configure, launch


def test_flag_is_recorded_as_the_override_and_an_override_beats_the_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("job: gpt/train/pretrain\ntopology:\n  backend: tensorflow\n")
    assert backend.chosen(None, {}, str(config)) == "tensorflow"
    assert backend.chosen(None, {"topology/backend": "torch"}, str(config)) == "torch"
    overrides = {}
    assert backend.chosen("torch", overrides, str(config)) == "torch"
    assert overrides == {"topology/backend": "torch"}  # so the run's config.yaml records it
    assert backend.chosen(None, {}, None) == keras.backend.backend()  # auto, once Keras runs: the running one


@pytest.fixture
def unchosen(monkeypatch):
    """A process where neither Keras nor the user has picked a backend yet, on a machine with no accelerator."""
    import theseus

    monkeypatch.setattr(theseus, "KERAS_BACKEND_GIVEN", False)
    monkeypatch.setattr(backend, "_running", lambda: None)
    monkeypatch.setattr(backend, "ACCELERATOR_DEVICES", ())
    for name in [name for name in os.environ if name.startswith("KERAS_DISTRIBUTION_")] + ["XLA_FLAGS"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_runs_one_cpu_process_on_torch_and_everything_else_on_jax(unchosen, tmp_path):
    assert backend.chosen(None, {}, None) == "torch"
    assert backend.chosen(None, {"topology/backend": "auto", "topology/strategy": "dp"}, None) == "torch"
    config = tmp_path / "run.yaml"
    config.write_text("job: gpt/train/pretrain\ntopology:\n  backend: auto\n  strategy: fsdp\n")
    assert backend.chosen(None, {}, str(config)) == "jax"  # a mesh
    assert backend.chosen(None, {"topology/strategy": "dp"}, str(config)) == "torch"  # an override beats the file
    assert backend.chosen(None, {"topology/devices": 8}, None) == "jax"
    assert backend.chosen(None, {"topology/num_processes": 2}, None) == "jax"
    assert backend.chosen(None, {"topology/coordinator": "127.0.0.1:1234"}, None) == "jax"
    assert backend.chosen("tensorflow", {}, None) == "tensorflow"  # a choice is kept
    unchosen.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    assert backend.chosen(None, {}, None) == "jax"
    unchosen.delenv("KERAS_DISTRIBUTION_NUM_PROCESSES")
    unchosen.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # simulating a mesh
    assert backend.chosen(None, {}, None) == "jax"
    unchosen.delenv("XLA_FLAGS")
    (tmp_path / "nvidia0").touch()
    unchosen.setattr(backend, "ACCELERATOR_DEVICES", (str(tmp_path / "nvidia[0-9]*"),))
    assert backend.chosen(None, {}, None) == "jax"


def test_auto_keeps_a_backend_the_environment_names_or_jax_without_torch(unchosen):
    import theseus

    unchosen.setattr(theseus, "KERAS_BACKEND_GIVEN", True)
    unchosen.setenv("KERAS_BACKEND", "tensorflow")
    assert backend.chosen(None, {}, None) == "tensorflow"
    unchosen.setattr(theseus, "KERAS_BACKEND_GIVEN", False)
    unchosen.setattr(backend.importlib.util, "find_spec", lambda name: None)
    assert backend.chosen(None, {}, None) == "jax"


def test_too_late_to_switch_is_a_clear_error(tmp_path):
    other = "torch" if keras.backend.backend() != "torch" else "jax"
    with pytest.raises(ConfigError, match=f"already imported with the {keras.backend.backend()} backend"):
        backend.select(other)
    backend.select(keras.backend.backend())  # the running backend is fine
    _, values = configure("gpt/train/pretrain", {"topology/backend": other})
    with pytest.raises(ConfigError, match="choose the backend before Keras is imported"):
        launch("gpt/train/pretrain", {}, values, tmp_path, "run")
    assert not (tmp_path / "run").exists()


def test_a_backend_that_is_not_installed_is_named(monkeypatch):
    monkeypatch.setitem(backend.BACKENDS, "torch", "theseus_no_such_package")
    with pytest.raises(
        ConfigError, match=r"backend 'torch' is not installed here \(pip install theseus_no_such_package\)"
    ):
        backend.check("torch")


@pytest.mark.backends
def test_keras_runs_the_backend_the_environment_names():
    """Under the marked subset on another backend, the tests really run on it."""
    import os

    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]


START = """
import logging, sys
from theseus.base import backend
backend.select(None, verbose=sys.argv[1] == "verbose")
import tensorflow
print(tensorflow.constant(2).numpy() * 21, logging.getLogger("jax._src.xla_bridge").getEffectiveLevel())
"""


def test_start_up_lines_are_kept_off_stderr_unless_verbose():
    """TensorFlow (imported by tfds, keras-hub and its own backend) writes its C++ start-up lines to stderr on import;
    `select` keeps them off, unless verbose; TensorFlow still works, and JAX logs its backend search
    only at ERROR."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    quiet, verbose = (
        subprocess.run([sys.executable, "-c", START, mode], env=env, capture_output=True, text=True, timeout=300)
        for mode in ("quiet", "verbose")
    )
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert (quiet.stdout, verbose.stdout) == (f"42 {logging.ERROR}\n", f"42 {logging.WARNING}\n")
    assert quiet.stderr == ""
    assert verbose.stderr, "TensorFlow printed no start-up lines: nothing was kept off"
