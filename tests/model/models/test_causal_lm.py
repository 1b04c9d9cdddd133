"""`CausalLMLoss` is Keras's masked sparse cross-entropy, computed without a one-hot."""

import keras
import numpy as np
import pytest
from support import needs_jax

from theseus.base.targets import IGNORE_INDEX
from theseus.model.axes import TENSOR_PARALLEL
from theseus.model.models import GPT, Llama
from theseus.model.models.causal_lm import CausalLMLoss, DecoderLM


@pytest.mark.parametrize("ignored", [0.0, 0.3, 1.0])
def test_loss_equals_keras_masked_sparse_crossentropy(ignored):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 7, 50)) * 4).astype("float32")
    targets = rng.integers(0, 50, (3, 7))
    targets[rng.random((3, 7)) < ignored] = IGNORE_INDEX
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_INDEX)
    expected = float(reference(targets, logits))
    got = float(CausalLMLoss()(targets, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    if ignored < 1.0:
        valid = targets != IGNORE_INDEX
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        by_hand = -np.take_along_axis(log_probs, np.where(valid, targets, 0)[..., None], -1)[..., 0][valid].mean()
        np.testing.assert_allclose(got, by_hand, rtol=1e-5)


@needs_jax("gradients are taken with jax.grad here")
def test_loss_gradient_equals_keras():
    import jax

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 5, 11)).astype("float32")
    targets = rng.integers(0, 11, (2, 5))
    targets[0, :2] = IGNORE_INDEX
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_INDEX)
    ours = jax.grad(lambda z: CausalLMLoss()(targets, z))(logits)
    theirs = jax.grad(lambda z: reference(targets, z))(logits)
    np.testing.assert_allclose(ours, theirs, atol=1e-7)
    assert np.all(np.asarray(ours)[0, :2] == 0)  # ignored targets get no gradient


@pytest.mark.parametrize("family", [GPT, Llama])
def test_families_share_the_decoder_and_its_default_sharding(family):
    model = family(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)
    assert isinstance(model, DecoderLM) and model.sharding == TENSOR_PARALLEL
    ids = np.arange(12, dtype="int32").reshape(2, 6)
    mask = np.array([[True] * 6, [False] * 2 + [True] * 4])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": mask})),
        keras.ops.convert_to_numpy(model(ids, padding_mask=mask)),
    )
    assert model.compute_output_shape({"token_ids": (2, 6)}) == (2, 6, 64)
    cache = model.init_cache(2, 10)
    assert len(cache) == 1 and tuple(cache[0][0].shape) == (2, 10, 2, 16)
    block = model.blocks[0]  # a block's config is its constructor arguments
    assert type(block).from_config(block.get_config()).get_config() == block.get_config()
