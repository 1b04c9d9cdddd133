"""`attend`: the explicit matmul-softmax-matmul and `keras.ops.dot_product_attention` agree;
`CausalSelfAttention.project`: one fused q/k/v product equals the three projections."""

import keras
import numpy as np
import pytest
from keras import ops
from support import needs_jax

from theseus.model.layers.attention import CausalSelfAttention, attend, cache_attention_mask


def inputs(seed=0, batch=3, length=9, heads=4, head_dim=16, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [ops.cast(rng.standard_normal((batch, length, heads, head_dim)) * 2, dtype) for _ in range(3)]


def test_causal_explicit_equals_fused_and_a_reference():
    q, k, v = inputs()
    fused = ops.convert_to_numpy(attend(q, k, v, fused=True))
    explicit = ops.convert_to_numpy(attend(q, k, v, fused=False))
    np.testing.assert_allclose(explicit, fused, atol=1e-5)
    # by hand for one row: query 4 of batch 1, head 2 sees keys 0..4
    qn, kn, vn = (ops.convert_to_numpy(t) for t in (q, k, v))
    scores = kn[1, :5, 2] @ qn[1, 4, 2] / 4.0
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(explicit[1, 4, 2], weights @ vn[1, :5, 2], atol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_masked_explicit_equals_fused(window):
    q, k, v = inputs(seed=1)
    padding = np.arange(9)[None, :] >= np.array([[0], [2], [5]])  # left-padded rows
    mask = cache_attention_mask(ops.convert_to_tensor(padding), 0, 9, sliding_window=window)
    fused = ops.convert_to_numpy(attend(q, k, v, mask, fused=True))
    explicit = ops.convert_to_numpy(attend(q, k, v, mask, fused=False))
    np.testing.assert_allclose(explicit, fused, atol=1e-5)


def test_bfloat16_explicit_stays_close_to_float32():
    q, k, v = inputs(seed=2)
    reference = ops.convert_to_numpy(attend(q, k, v, fused=False))
    low = attend(*(ops.cast(t, "bfloat16") for t in (q, k, v)), fused=False)
    assert low.dtype == "bfloat16" or str(low.dtype).endswith("bfloat16")
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(low, "float32")), reference, atol=0.1)


@needs_jax("gradients are taken with jax.grad here")
def test_gradients_agree():
    import jax

    q, k, v = inputs(seed=3)
    loss = lambda fused: jax.grad(lambda q, k, v: (attend(q, k, v, fused=fused) ** 2).sum(), argnums=(0, 1, 2))  # noqa: E731
    for ours, theirs in zip(loss(False)(q, k, v), loss(True)(q, k, v)):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("n_kv_head, bias", [(4, True), (2, False)])
@pytest.mark.parametrize("lora", [False, True])
def test_one_fused_projection_equals_the_three(n_kv_head, bias, lora):
    """`project` joins the q/k/v kernels into one product (adapters keep the three calls): same values."""
    keras.utils.set_random_seed(0)
    attention = CausalSelfAttention(4, 8, n_kv_head=n_kv_head, qkv_bias=bias)
    x = ops.convert_to_tensor(np.random.default_rng(0).standard_normal((2, 5, 24)).astype("float32"))
    attention.build(x.shape)
    rng = np.random.default_rng(1)
    for projection in (attention.query, attention.key, attention.value):
        if bias:  # non-zero, so a bias in the wrong place would show
            projection.bias.assign(rng.standard_normal(projection.bias.shape).astype("float32"))
        if lora:
            projection.enable_lora(2)
            projection.lora_kernel_b.assign(rng.standard_normal(projection.lora_kernel_b.shape).astype("float32"))
    projected = [ops.convert_to_numpy(t) for t in attention.project(x)]
    assert [p.shape[-1] for p in projected] == [32, 8 * n_kv_head, 8 * n_kv_head]
    for got, projection in zip(projected, (attention.query, attention.key, attention.value)):
        np.testing.assert_allclose(got, ops.convert_to_numpy(projection(x)), rtol=1e-6, atol=1e-6)
