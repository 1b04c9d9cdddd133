"""LoRA through `Dense.enable_lora`: parameter counts, frozen base, merge, adapter files,
freezing options, and a merged export read by `transformers`."""

import gc

import keras
import numpy as np
import pytest

from theseus.config import ConfigError
from theseus.model.huggingface import HFCompat, save_hf
from theseus.model.models import GPT
from theseus.training import lora

WIDTH, LAYERS, HIDDEN = 64, 2, 256
PROJECTIONS = {
    "query": (WIDTH, WIDTH),
    "key": (WIDTH, WIDTH),
    "value": (WIDTH, WIDTH),
    "output": (WIDTH, WIDTH),
    "up": (WIDTH, HIDDEN),
    "down": (HIDDEN, WIDTH),
}


def gpt(seed=0, width=WIDTH):
    keras.utils.set_random_seed(seed)
    model = GPT(vocab_size=320, block_size=16, n_layer=LAYERS, n_head=4, n_embd=width)
    model.build((None, 16))
    return model


def tokens(seed=0, rows=8):
    return np.random.default_rng(seed).integers(0, 320, (rows, 17)).astype("int32")


def snapshot(variables):
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value)) for v in variables}


@pytest.mark.parametrize(
    "targets, names", [(["query", "value"], ["query", "value"]), (["attn", "mlp"], list(PROJECTIONS))]
)
def test_trainable_parameters_are_the_adapters_of_the_targets(targets, names):
    model = gpt()
    rank = 4
    layers = lora.enable_lora(model, rank, 8.0, targets)
    expected = LAYERS * sum(rank * (PROJECTIONS[n][0] + PROJECTIONS[n][1]) for n in names)  # r * (in + out) each
    assert lora.count(model.trainable_weights) == expected
    assert len(layers) == LAYERS * len(names)
    assert all(v.name in lora.ADAPTERS for v in model.trainable_weights)
    assert model.get_layer("block_0").attn.query.lora_kernel_a.logical_axes[1] is None  # the rank axis is never split


@pytest.mark.slow
def test_training_changes_only_adapters_and_merging_keeps_the_logits():
    model = gpt()
    base = snapshot(model.weights)
    lora.enable_lora(model, 4, 8.0, ["attn", "mlp"])
    start = model(tokens(1)[:, :-1])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(start), keras.ops.convert_to_numpy(model(tokens(1)[:, :-1]))
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = tokens(0, 32)
    history = model.fit(data[:, :-1], data[:, 1:], batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = snapshot([v for v in model.weights if v.name not in lora.ADAPTERS])
    assert after.keys() == base.keys()
    for path, value in base.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)  # bitwise: the base never moved
    probe = tokens(2)[:, :-1]
    unmerged = keras.ops.convert_to_numpy(model(probe))
    assert np.abs(unmerged - keras.ops.convert_to_numpy(start)).max() > 1e-3  # the adapters learned something
    assert lora.merge_lora(model) == LAYERS * len(PROJECTIONS)
    assert not any(v.name in lora.ADAPTERS for v in model.weights) and not lora.lora_layers(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(probe)), unmerged, atol=1e-5, rtol=0)


def test_merging_folds_each_adapter_into_its_kernel_and_collects_no_garbage_per_adapter(monkeypatch):
    """`kernel += alpha / r * A @ B` (against float64), the adapters gone, and no `gc.collect()`:
    Keras runs one for every `del layer.variable`, seconds each in a process the size of a
    fine-tune's, which made the merge of a 135M model take minutes (`benchmarks/export_tail.py`)."""
    model = gpt()
    count = len(model.weights)
    layers = lora.enable_lora(model, 4, 6.0, ["attn", "mlp"])
    rng = np.random.default_rng(0)
    expected = {}
    for layer in layers:  # as training leaves them: B no longer zero
        layer.lora_kernel_b.assign(rng.normal(0, 0.5, layer.lora_kernel_b.shape).astype("float32"))
        w, a, b = (
            np.float64(keras.ops.convert_to_numpy(v.value))
            for v in (layer.kernel, layer.lora_kernel_a, layer.lora_kernel_b)
        )
        expected[layer.kernel.path] = w + 1.5 * a @ b
    collections = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or collect(*args))
    assert lora.merge_lora(model) == len(layers) == LAYERS * len(PROJECTIONS)
    assert collections == []
    assert len(model.weights) == count and not lora.lora_layers(model)
    for layer in layers:
        assert layer.kernel.trainable and not hasattr(layer, "lora_kernel_a")
        merged = keras.ops.convert_to_numpy(layer.kernel.value)
        np.testing.assert_allclose(merged, expected[layer.kernel.path], rtol=0, atol=2e-6, err_msg=layer.kernel.path)


def test_adapter_file_is_small_and_restores_the_same_model(tmp_path):
    model = gpt(width=128)  # HDF5 costs ~1 KB per array: a base too small would measure that
    lora.enable_lora(model, 2, 4.0, ["query", "value"])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = tokens(0, 16)
    model.fit(data[:, :-1], data[:, 1:], batch_size=8, epochs=1, verbose=0)
    lora.save_trainable(model, tmp_path / "adapters.h5")
    gpt(width=128).save_weights(tmp_path / "base.weights.h5")
    ratio = (tmp_path / "adapters.h5").stat().st_size / (tmp_path / "base.weights.h5").stat().st_size
    assert ratio < 0.05, ratio  # adapters and their Adam moments, against the base weights alone

    restored = gpt(width=128)  # the same base (same seed), set up the same way
    lora.enable_lora(restored, 2, 4.0, ["query", "value"])
    restored.compile(optimizer=keras.optimizers.Adam(1e-2))
    restored.optimizer.build(restored.trainable_variables)
    lora.load_trainable(restored, tmp_path / "adapters.h5")
    probe = tokens(3)[:, :-1]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(probe)), keras.ops.convert_to_numpy(model(probe)))
    for mine, theirs in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine.value), keras.ops.convert_to_numpy(theirs.value))

    other = gpt(width=128)
    lora.enable_lora(other, 2, 4.0, ["up"])
    with pytest.raises(ConfigError, match="other LoRA or freezing settings"):
        lora.load_trainable(other, tmp_path / "adapters.h5")
    with pytest.raises(ConfigError, match="whole model"):
        lora.load_trainable(other, tmp_path / "base.weights.h5")


def test_freezing_options():
    model = gpt()
    lora.freeze(model, train_last_blocks=1)
    assert model.trainable_weights and all(v.path.startswith("gpt/block_1/") for v in model.trainable_weights)
    assert len(model.trainable_weights) == len([v for v in model.weights if "/block_1/" in v.path])
    model = gpt()
    lora.freeze(model, trainable=["ln_", "wte"])
    assert {v.path for v in model.trainable_weights} == {
        v.path for v in model.weights if "/ln_" in v.path or "wte" in v.path
    }
    with pytest.raises(ConfigError, match="matches no weight"):
        lora.freeze(gpt(), trainable=["nothing_like_this"])
    with pytest.raises(ConfigError, match="has 2 blocks"):
        lora.freeze(gpt(), train_last_blocks=3)
    with pytest.raises(ConfigError, match="match no projection"):
        lora.enable_lora(gpt(), 4, 8.0, ["qkv_proj"])
    layer = gpt().get_layer("block_0").attn.query
    layer.enable_lora(2)
    with pytest.raises(ValueError, match="already enabled"):
        layer.enable_lora(2)


@pytest.mark.slow
def test_merged_export_loads_in_transformers_with_the_same_logits(tmp_path):
    import torch  # the test extra's and a core dependency: never skipped
    import transformers
    from hf_checkpoints import save_checkpoint

    source = save_checkpoint(tmp_path / "source", "llama")
    model = HFCompat(id=str(source))
    layers = lora.enable_lora(model, 4, 8.0, ["attn", "mlp"])
    rng = np.random.default_rng(0)
    for layer in layers:  # adapters as training would leave them: B no longer zero
        layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape).astype("float32"))
    ids = rng.integers(0, 300, (2, 12))
    unmerged = keras.ops.convert_to_numpy(model(ids))
    lora.merge_lora(model)
    save_hf(model, tmp_path / "merged")
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        expected = reference(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    original = transformers.AutoModelForCausalLM.from_pretrained(str(source)).eval()
    with torch.no_grad():
        assert np.abs(original(torch.tensor(ids, dtype=torch.long)).logits.numpy() - expected).max() > 1e-2
    np.testing.assert_allclose(unmerged, expected, atol=1e-4, rtol=0)
