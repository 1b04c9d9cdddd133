"""Optimizers by name: LM defaults, and weight decay only where it belongs, on every backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from theseus.training.optimizers import NO_DECAY, OPTIMIZERS, MaskedAdamW, build_optimizer
from theseus.training.schedules import WSD

LR, WD = 0.1, 0.5
PATHS = ["wte/embeddings", "proj/kernel", "proj/bias", "rms_norm/scale", "ln_1/gamma", "ln_1/beta"]


def tiny_model() -> keras.Model:
    """Embedding -> Dense (kernel, bias) -> an RMS norm (weight "scale") -> a GPT-style LayerNorm `ln_1`.

    Explicit layer names keep the paths the same in every model a session builds.
    """
    tokens = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(10, 3, name="wte")(tokens)
    x = keras.layers.Dense(3, name="proj")(x)
    x = keras.layers.RMSNormalization(name="rms_norm")(x)
    x = keras.layers.LayerNormalization(name="ln_1")(x)
    return keras.Model(tokens, x)


def decayed_paths(name: str, how: str, **kwargs) -> list[str]:
    """Paths of the variables one zero-gradient step of optimizer `name` changed.

    With zero gradients every update vanishes (Adam's and SGD's moments stay 0, Lion takes
    sign(0) = 0), so a variable changes only by decoupled weight decay, v *= 1 - lr * wd;
    this also checks that factor. `how` is "apply" (eager `apply_gradients`) or "fit"
    (a compiled train step, as the trainer runs it).
    """
    model = tiny_model()
    for v in model.trainable_variables:  # nonzero everywhere, so decay always shows (beta starts at 0)
        v.assign(np.random.default_rng(0).uniform(1.0, 2.0, v.shape).astype("float32"))
    optimizer = build_optimizer(name, learning_rate=LR, weight_decay=WD, **kwargs)
    before = {v.path: ops.convert_to_numpy(v) for v in model.trainable_variables}
    assert sorted(before) == sorted(PATHS)
    if how == "apply":
        optimizer.apply_gradients([(ops.zeros(v.shape, v.dtype), v) for v in model.trainable_variables])
    else:
        model.compile(optimizer=optimizer, loss=lambda y, p: 0.0 * ops.sum(p))  # zero, but connected, gradients
        model.fit(np.zeros((2, 4), "int32"), np.zeros((2, 4, 3)), batch_size=2, epochs=1, verbose=0)
    decayed = []
    for v in model.trainable_variables:
        after = ops.convert_to_numpy(v)
        if not np.array_equal(after, before[v.path]):
            np.testing.assert_allclose(after, before[v.path] * (1 - LR * WD), rtol=1e-6, err_msg=v.path)
            decayed.append(v.path)
    return sorted(decayed)


def test_defaults_are_adamw_for_language_models():
    optimizer = build_optimizer("adamw", learning_rate=1e-3)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.95, 1e-8)
    assert optimizer.weight_decay == 0.1 and optimizer.global_clipnorm == 1.0
    assert optimizer.clipnorm is None and optimizer.gradient_accumulation_steps is None
    assert optimizer.no_decay == NO_DECAY


@pytest.mark.parametrize("clip", [0, 0.0, None])
def test_zero_or_none_clipnorm_turns_clipping_off(clip):
    assert build_optimizer("adamw", learning_rate=1e-3, global_clipnorm=clip).global_clipnorm is None


def test_each_name_builds_its_optimizer():
    adam = build_optimizer("adam", learning_rate=1e-3, beta_2=0.99, epsilon=1e-6)
    assert (
        isinstance(adam, keras.optimizers.Adam)
        and not isinstance(adam, keras.optimizers.AdamW)
        and adam.weight_decay is None
        and (adam.beta_2, adam.epsilon) == (0.99, 1e-6)
    )
    sgd = build_optimizer("sgd", learning_rate=1e-3, beta_1=0.8, weight_decay=0.01)
    assert isinstance(sgd, keras.optimizers.SGD) and (sgd.momentum, sgd.weight_decay) == (0.8, 0.01)
    lion = build_optimizer("lion", learning_rate=1e-4, beta_2=0.98, gradient_accumulation_steps=4)
    assert isinstance(lion, keras.optimizers.Lion) and (lion.beta_1, lion.beta_2, lion.weight_decay) == (0.9, 0.98, 0.1)
    assert lion.gradient_accumulation_steps == 4 and lion.global_clipnorm == 1.0
    assert sorted(OPTIMIZERS) == ["adam", "adamw", "lion", "sgd"]


def test_an_optimizer_is_returned_unchanged():
    optimizer = keras.optimizers.Adafactor()
    assert build_optimizer(optimizer, learning_rate=1.0, weight_decay=0.3) is optimizer


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'adagrad'.*\['adam', 'adamw', 'lion', 'sgd'\]"):
        build_optimizer("adagrad", learning_rate=1e-3)


def test_a_schedule_is_the_learning_rate():
    schedule = WSD(peak_lr=1e-3, total_steps=100, warmup=10)
    optimizer = build_optimizer("adamw", learning_rate=schedule)
    assert optimizer._learning_rate is schedule
    assert float(ops.convert_to_numpy(optimizer.learning_rate)) == 0.0  # schedule(0): warmup starts at 0


@pytest.mark.parametrize("how", ["apply", "fit"])
@pytest.mark.parametrize("name", ["adamw", "lion", "sgd"])
def test_only_kernels_are_decayed(name, how):
    """Embeddings, biases and norm weights are spared: "rms_norm/scale" by its layer's name,
    "ln_1/gamma" and "ln_1/beta" by their own."""
    assert decayed_paths(name, how) == ["proj/kernel"]


def test_adam_decays_nothing():
    assert decayed_paths("adam", "apply") == []


def test_no_decay_is_matched_as_substrings_of_paths():
    # "proj" is neither variable's name ("kernel", "bias"); only their paths contain it.
    assert decayed_paths("adamw", "apply", no_decay=("proj",)) == sorted(set(PATHS) - {"proj/kernel", "proj/bias"})
    assert decayed_paths("adamw", "apply", no_decay=("ln_1/",)) == sorted(set(PATHS) - {"ln_1/gamma", "ln_1/beta"})
    assert decayed_paths("adamw", "apply", no_decay=()) == sorted(PATHS)  # Keras's default: decay everything


def test_masked_optimizer_serialization_round_trip():
    schedule = WSD(peak_lr=1e-3, total_steps=100)
    optimizer = build_optimizer("adamw", learning_rate=schedule, no_decay=("bias", "gamma"))
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(optimizer)))
    assert config["registered_name"] == "theseus>MaskedAdamW"
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, MaskedAdamW) and restored.no_decay == ("bias", "gamma")
    assert isinstance(restored._learning_rate, WSD) and restored._learning_rate.get_config() == schedule.get_config()
    assert (restored.beta_2, restored.weight_decay, restored.global_clipnorm) == (0.95, 0.1, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_other_backends_decay_the_same_variables(backend):
    """Keras's own `var_names` match differs by backend (short name vs TF path); the mask must not.
    And the masked optimizers update as the class Keras itself makes on the backend does (on torch,
    all variables at once with `torch._foreach_*` ops)."""
    program = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import keras, test_optimizers as t\n"
        "assert keras.backend.backend() == sys.argv[2], keras.backend.backend()\n"
        "for n, k in [('adamw', 'AdamW'), ('lion', 'Lion'), ('sgd', 'SGD')]:\n"
        "    assert isinstance(t.build_optimizer(n, learning_rate=0.1), type(getattr(keras.optimizers, k)())), n\n"
        "print(json.dumps({n: t.decayed_paths(n, 'fit') for n in ['adamw', 'lion', 'sgd']}))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", program, str(Path(__file__).parent), backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {n: ["proj/kernel"] for n in ["adamw", "lion", "sgd"]}
