import keras
import numpy as np
import pytest
from keras import ops

from theseus.model.axes import Axes
from theseus.model.models import Llama

SMALL = dict(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def logits(model, ids, mask=None):
    return ops.convert_to_numpy(model(ids) if mask is None else model(ids, padding_mask=mask))


def test_shapes_defaults_and_grouped_query_weights():
    model = Llama(**SMALL)
    out = model(np.zeros((3, 10), "int32"))
    assert tuple(out.shape) == (3, 10, 64) and keras.backend.standardize_dtype(out.dtype) == "float32"
    assert (model.head_dim, model.n_embd_ff) == (8, 128)  # n_embd / n_head; 8/3 * 32 rounded up to 64
    key = next(v for v in model.weights if v.path.endswith("block_0/attn/key/kernel"))
    query = next(v for v in model.weights if v.path.endswith("block_0/attn/query/kernel"))
    assert tuple(key.shape) == (32, 16) and tuple(query.shape) == (32, 32)
    assert key.logical_axes == (Axes.N_EMBD, Axes.N_KV)


def test_attention_is_causal():
    model = Llama(**SMALL)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 64, (1, 12))
    b = a.copy()
    b[0, 8:] = (b[0, 8:] + 1) % 64
    la, lb = logits(model, a), logits(model, b)
    np.testing.assert_allclose(la[0, :8], lb[0, :8], atol=1e-5)
    assert np.abs(la[0, 8:] - lb[0, 8:]).max() > 1e-3


def test_sliding_window_limits_what_one_layer_sees():
    model = Llama(**{**SMALL, "n_layer": 1}, sliding_window=3)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 64, (1, 10))
    b = a.copy()
    b[0, 2] = (b[0, 2] + 1) % 64  # seen by positions 2, 3 and 4 only
    diff = np.abs(logits(model, a) - logits(model, b))[0].max(axis=-1)
    assert (diff[2:5] > 1e-4).all() and (diff[5:] < 1e-6).all() and (diff[:2] < 1e-6).all()


def test_a_padded_row_gets_the_logits_it_gets_alone():
    model = Llama(**SMALL, qkv_bias=True, qk_norm=True)
    rng = np.random.default_rng(2)
    row = rng.integers(0, 64, (1, 7))
    left = np.concatenate([np.zeros((1, 5), "int64"), row], axis=1)
    right = np.concatenate([row, np.zeros((1, 5), "int64")], axis=1)
    ids = np.concatenate([left, right]).astype("int32")
    mask = np.array([[False] * 5 + [True] * 7, [True] * 7 + [False] * 5])
    alone = logits(model, row)[0]
    padded = logits(model, ids, mask)
    np.testing.assert_allclose(padded[0, 5:], alone, atol=1e-5)
    np.testing.assert_allclose(padded[1, :7], alone, atol=1e-5)
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(logits(model, {"token_ids": ids, "padding_mask": mask}), padded, atol=1e-6)


def test_tied_head_is_the_embedding_and_config_round_trips():
    tied, untied = Llama(**SMALL, tie_embeddings=True), Llama(**SMALL)
    tied.build((None, 8))
    untied.build((None, 8))
    assert untied.count_params() - tied.count_params() == 32 * 64
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    model = Llama(**SMALL, rope_scaling=scaling, sliding_window=4)
    clone = Llama.from_config(model.get_config())
    assert clone.get_config() == model.get_config() and clone.rope_scaling == scaling


def test_cached_decoding_equals_the_full_forward_pass():
    """What generation relies on: prefill a left-padded batch, then one token at a time."""
    model = Llama(**SMALL, sliding_window=5)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 64, (2, 9)).astype("int32")
    mask = np.ones((2, 9), bool)
    mask[1, :3] = False
    full = logits(model, ids, mask)
    cache = model.init_cache(2, 9)
    first, cache = model.call_with_cache(ids[:, :6], cache, 0, mask)
    steps = [ops.convert_to_numpy(first)]
    for t in range(6, 9):
        out, cache = model.call_with_cache(ids[:, t : t + 1], cache, t, mask)
        steps.append(ops.convert_to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1)[mask], full[mask], atol=1e-5)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        Llama(vocab_size=64, n_head=4, n_embd=30)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        Llama(**{**SMALL, "n_kv_head": 3})(np.zeros((1, 4), "int32"))
