"""The same model on JAX, TensorFlow and PyTorch: same weights give the same logits for every
family, and the default job runs end to end on each backend. Other backends run in subprocesses, since
Keras picks its backend once per process."""

import json
import re
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from keras import ops
from support import run_command

from theseus.model.models import GPT, Llama

BACKENDS = ["tensorflow", "torch"]
TESTS = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
FAMILIES = {  # every architecture the HF families map onto, on their distinctive options
    "gpt2": (GPT, {}),
    "gpt-rope-untied": (GPT, {"position": "rope", "tie_embeddings": False}),
    "llama-gqa": (
        Llama,
        {
            "n_kv_head": 2,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
        },
    ),
    "mistral-sliding-window": (Llama, {"n_kv_head": 2, "sliding_window": 5}),
    "qwen2-qkv-bias": (Llama, {"n_kv_head": 2, "qkv_bias": True, "tie_embeddings": True}),
    "qwen3-qk-norm": (Llama, {"n_kv_head": 2, "qk_norm": True, "head_dim": 16}),
}

LOGITS_SCRIPT = """
import json, sys
import numpy as np
import theseus
import keras
from theseus.model.models import GPT, Llama
for family, kwargs, weights, ids, out in json.loads(sys.argv[1]):
    model = {"GPT": GPT, "Llama": Llama}[family](**kwargs)
    model.build((None, kwargs["block_size"]))
    model.load_weights(weights)
    ids = np.load(ids)
    padding = np.arange(ids.shape[1])[None, :] >= np.array([[0], [3], [7]])  # left-padded rows
    np.save(out, np.stack([keras.ops.convert_to_numpy(model(ids)),
                           keras.ops.convert_to_numpy(model(ids, padding_mask=padding))]))
print(keras.backend.backend())
"""


def other_backend(backend, script, *args):
    return run_command([sys.executable, "-c", textwrap.dedent(script), *args], env={"KERAS_BACKEND": backend})


@pytest.fixture(scope="module")
def jax_logits(tmp_path_factory):
    """Each family's weights, saved, and its logits under JAX (plain and with padded rows)."""
    folder = tmp_path_factory.mktemp("families")
    ids = np.random.default_rng(0).integers(0, 64, (3, 16)).astype("int32")
    np.save(folder / "ids.npy", ids)
    padding = np.arange(16)[None, :] >= np.array([[0], [3], [7]])
    cases, reference = [], {}
    for name, (cls, variant) in FAMILIES.items():
        kwargs = {**SMALL, **variant}
        keras.utils.set_random_seed(0)
        model = cls(**kwargs)
        model.build((None, 16))
        model.save_weights(folder / f"{name}.weights.h5")
        reference[name] = np.stack(
            [ops.convert_to_numpy(model(ids)), ops.convert_to_numpy(model(ids, padding_mask=padding))]
        )
        cases.append(
            [
                cls.__name__,
                kwargs,
                str(folder / f"{name}.weights.h5"),
                str(folder / "ids.npy"),
                str(folder / f"{name}.npy"),
            ]
        )
    return folder, cases, reference


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_weights_same_logits_for_every_family(tmp_path, backend, jax_logits):
    folder, cases, reference = jax_logits
    cases = [[*case[:4], str(tmp_path / f"{name}.npy")] for name, case in zip(FAMILIES, cases)]
    result = other_backend(backend, LOGITS_SCRIPT, json.dumps(cases))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == backend
    for name in FAMILIES:
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), reference[name], atol=1e-5, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, choice", [("tensorflow", "--topology.backend=tensorflow"), ("torch", "--backend=torch")]
)
def test_default_job_runs_on_each_backend(recipe, tmp_path, backend, choice):
    """Chosen by the config key or by the flag; the run says what it ran on and records it."""
    result = recipe(
        "gpt/train/pretrain",
        choice,
        "--out",
        tmp_path,
        "--name",
        "run",
        "--training.tokens=20480",
        "--architecture.n_layer=1",
        "--architecture.n_embd=64",
        "--architecture.block_size=64",
        "--logging.validation_interval=20",
        "--logging.progress_bar=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tokens each) on {backend}" in result.stdout
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["topology"]["backend"] == backend
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0] - 0.5, val


BFLOAT16_SCRIPT = """
import json
import numpy as np
import theseus
import keras
from theseus.model.models import GPT
from theseus.training.optimizers import build_optimizer
from theseus.training.schedules import WSD

keras.utils.set_random_seed(0)
keras.config.set_dtype_policy("mixed_bfloat16")
model = GPT(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
model.build((None, 32))
keras.config.set_dtype_policy("float32")
model.compile(optimizer=build_optimizer("adamw", learning_rate=WSD(1e-2, 30)))
tokens = np.tile(np.arange(33) % 7, (8, 1)).astype("int32")  # a pattern to learn
history = model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=8, epochs=30, verbose=0)
hidden = model.blocks[0].mlp.up(keras.ops.ones((1, 32)))
print(json.dumps({
    "backend": keras.backend.backend(), "losses": history.history["loss"],
    "weights": sorted({keras.backend.standardize_dtype(w.dtype) for w in model.weights}),
    "compute": keras.backend.standardize_dtype(hidden.dtype),
    "logits": keras.backend.standardize_dtype(model(tokens[:1, :-1]).dtype),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", *BACKENDS])
def test_bfloat16_training_on_every_backend(backend):
    """Mixed precision: bfloat16 compute, float32 weights and logits, and the model learns."""
    result = other_backend(backend, BFLOAT16_SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    assert report["weights"] == ["float32"] and report["compute"] == "bfloat16" and report["logits"] == "float32"
    losses = report["losses"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_marked_subset_passes_on(backend):
    """The tests marked `backends` (models, layers, the loss, schedules, optimizers, callbacks,
    LoRA, generation, evaluators), run in-process on another backend: the whole suite runs
    on JAX, this subset on TensorFlow and PyTorch too."""
    result = run_command(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "backends and not slow",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",
            str(TESTS),
        ],
        env={"KERAS_BACKEND": backend},
        timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-5000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 250 and "failed" not in summary, summary
