"""The same model on JAX, TensorFlow and PyTorch: same weights give the same logits, and the
default job runs end to end on each backend. Other backends run in subprocesses, since
Keras picks its backend once per process."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from keras import ops

from theseus.model.models import GPT

BACKENDS = ["tensorflow", "torch"]
SMALL = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)

LOGITS_SCRIPT = """
import json, sys
import numpy as np
import theseus
import keras
from theseus.model.models import GPT
kwargs, weights, ids, out = json.loads(sys.argv[1])
model = GPT(**kwargs)
model.build((None, kwargs["block_size"]))
model.load_weights(weights)
np.save(out, keras.ops.convert_to_numpy(model(np.load(ids))))
print(keras.backend.backend())
"""


def other_backend(backend, script, *args):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env={**__import__("os").environ, "KERAS_BACKEND": backend},
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", [{}, {"position": "rope", "tie_embeddings": False}])
def test_same_weights_same_logits(tmp_path, backend, variant):
    kwargs = {**SMALL, **variant}
    model = GPT(**kwargs)
    model.build((None, 16))
    weights = tmp_path / "gpt.weights.h5"
    model.save_weights(weights)
    ids = np.random.default_rng(0).integers(0, 64, (3, 16)).astype("int32")
    np.save(tmp_path / "ids.npy", ids)
    reference = ops.convert_to_numpy(model(ids))
    result = other_backend(backend, LOGITS_SCRIPT, json.dumps([kwargs, str(weights), str(tmp_path / "ids.npy"), str(tmp_path / "out.npy")]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == backend
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), reference, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_default_job_runs_on_each_backend(recipe, tmp_path, backend):
    result = recipe(
        "gpt/train/pretrain", "--backend", backend, "--out", tmp_path, "--name", "run",
        "--training.tokens=20480", "--architecture.n_layer=1", "--architecture.n_embd=64",
        "--architecture.block_size=64", "--logging.validation_interval=20", "--logging.progress_bar=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0] - 0.5, val
