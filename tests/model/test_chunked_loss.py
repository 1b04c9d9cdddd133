"""The chunked causal-LM loss equals the loss on full logits, with its gradients, and saves memory."""

import keras
import numpy as np
import pytest
from support import needs_jax

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError, build, collect, resolve
from theseus.model.chunked_loss import AUTO_VOCABULARY, BACKENDS, chunk_size
from theseus.model.models import GPT, Llama
from theseus.training.config import TrainingSection

JAX = keras.backend.backend() == "jax"
CHUNKED = keras.backend.backend() in BACKENDS
needs_chunked = pytest.mark.skipif(not CHUNKED, reason="TensorFlow keeps the full logits")


def tiny(family=Llama, vocab=97, tied=False, **kwargs):
    keras.utils.set_random_seed(0)
    sizes = dict(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=32, **kwargs)
    model = family(**sizes) if family is GPT else family(tie_embeddings=tied, **sizes)
    model.build((None, None))
    return model


def batch(vocab=97, rows=3, length=9):
    rng = np.random.default_rng(1)
    x = rng.integers(0, vocab, (rows, length)).astype("int32")
    y = rng.integers(0, vocab, (rows, length)).astype("int32")
    y[0, :4] = IGNORE_INDEX  # a prompt
    y[-1, -1] = IGNORE_INDEX
    return x, y


def step_function(model, chunk, optimizer="sgd"):
    """Keras's own loss-and-gradient function of `model` (what `fit` differentiates), as a pure function."""
    import jax

    model.compile(optimizer=optimizer, loss_chunk=chunk)
    model.optimizer.build(model.trainable_variables)
    state = [[v.value for v in variables] for variables in (model.non_trainable_variables, model.metrics_variables)]
    optimizer_variables = [v.value for v in model.optimizer.variables]

    def loss(trainable, x, y, sample_weight=None):
        return model.compute_loss_and_updates(
            trainable, *state, x, y, sample_weight, training=True, optimizer_variables=optimizer_variables
        )[0]

    return jax.jit(jax.value_and_grad(loss))


def loss_and_gradients(model, chunk, x, y, sample_weight=None):
    """The training loss of `model` on a batch, compiled with `loss_chunk=chunk`, and its gradient in
    each trainable weight (as numpy): on JAX through `step_function`, on torch by autograd."""
    if JAX:
        trainable = [v.value for v in model.trainable_variables]
        loss, grads = step_function(model, chunk)(trainable, x, y, sample_weight)
    else:
        import torch

        model.compile(optimizer="sgd", loss_chunk=chunk)
        # a copy: Keras's torch loss scales the weights it is given in place (`apply_mask`)
        weights = None if sample_weight is None else torch.tensor(sample_weight)
        loss = model.compute_loss(x, torch.as_tensor(y), model(x, training=True), weights, training=True)
        grads = torch.autograd.grad(loss, [v.value for v in model.trainable_variables])
    assert model.loss_chunk == chunk
    return keras.ops.convert_to_numpy(loss), [keras.ops.convert_to_numpy(g) for g in grads]


@needs_chunked
@pytest.mark.parametrize(
    "family, tied, chunk, weighted",
    [(GPT, True, 7, False), (Llama, False, 4, True), (Llama, False, 1000, False)],
)
def test_loss_and_every_gradient_equal_full_logits(family, tied, chunk, weighted):
    model = tiny(family, tied=tied)
    x, y = batch()  # 27 targets: chunks of 7 or 4 tokens (2 or 1 positions a row) do not divide them
    weights = np.repeat(np.linspace(0.5, 2.0, 3, dtype="float32")[:, None], 9, axis=1) if weighted else None
    full, full_grads = loss_and_gradients(model, 0, x, y, weights)
    chunked, grads = loss_and_gradients(model, chunk, x, y, weights)
    assert keras.ops.shape(model(x, training=True))[-1] == 32  # no logits in training
    np.testing.assert_allclose(float(chunked), float(full), rtol=1e-6, atol=1e-6)
    for variable, a, b in zip(model.trainable_variables, grads, full_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=variable.path)
    assert np.abs(full_grads[0]).max() > 1e-4  # the gradients compared are not all zero


@needs_chunked
def test_a_frozen_head_and_a_loss_of_no_targets():
    model = tiny(Llama, tied=False)
    model.lm_head.trainable = False  # e.g. a LoRA fine-tune: the head's gradient is not computed
    x, y = batch()
    full, full_grads = loss_and_gradients(model, 0, x, y)
    chunked, grads = loss_and_gradients(model, 5, x, y)
    np.testing.assert_allclose(float(chunked), float(full), rtol=1e-6)
    for a, b in zip(grads, full_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    nothing, zeros = loss_and_gradients(model, 5, x, np.full_like(y, IGNORE_INDEX))
    assert float(nothing) == 0.0 and all(not g.any() for g in zeros)


@needs_chunked
def test_bfloat16_chunked_loss_stays_float32_and_close():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny(Llama, tied=True)
    finally:
        keras.config.set_dtype_policy(previous)
    x, y = batch()
    full, full_grads = loss_and_gradients(model, 0, x, y)
    chunked, grads = loss_and_gradients(model, 6, x, y)
    assert chunked.dtype == "float32" and all(g.dtype == "float32" for g in grads)
    np.testing.assert_allclose(float(chunked), float(full), rtol=1e-3)
    for a, b in zip(grads, full_grads, strict=True):  # bfloat16 products: the same within their rounding
        np.testing.assert_allclose(a, b, atol=2e-3, rtol=2e-2)


def fitted(chunk, micro_steps):
    model = tiny(GPT)
    optimizer = keras.optimizers.AdamW(1e-2, gradient_accumulation_steps=micro_steps if micro_steps > 1 else None)
    model.compile(optimizer=optimizer, loss_chunk=chunk)
    x, y = batch(rows=8, length=8)
    history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    return model, history.history["loss"][-1]


@pytest.mark.slow
def test_fit_trains_the_same_weights_with_gradient_accumulation():
    chunked, chunked_loss = fitted(5, micro_steps=2)
    full, full_loss = fitted(0, micro_steps=2)
    assert chunked.loss_chunk == (5 if CHUNKED else 0)  # TensorFlow keeps the full logits
    np.testing.assert_allclose(chunked_loss, full_loss, rtol=1e-5)
    for a, b in zip(chunked.weights, full.weights, strict=True):
        np.testing.assert_allclose(*map(keras.ops.convert_to_numpy, (a, b)), atol=1e-5, err_msg=a.path)
    x, y = batch(rows=2, length=8)  # evaluation still sees logits
    assert keras.ops.shape(chunked(x))[-1] == 97
    np.testing.assert_allclose(chunked.evaluate(x, y, verbose=0), full.evaluate(x, y, verbose=0), rtol=1e-5)


def loss_chunk(value):
    """The `training/loss_chunk` key resolved from `value` as the command line gives it."""
    table = collect([TrainingSection])
    return build(TrainingSection, resolve(table, {}, {"training/loss_chunk": value})).loss_chunk


def test_the_config_key_selects_the_chunked_loss():
    assert loss_chunk("auto") == "auto" and loss_chunk("512") == 512 and loss_chunk("false") is False
    for bad in ("-1", "chunky", "1.5"):
        with pytest.raises(ConfigError, match="training/loss_chunk"):
            loss_chunk(bad)
    on = 1 if CHUNKED else 0
    assert chunk_size("auto", AUTO_VOCABULARY) == 0 and chunk_size("auto", 151_936) == 512 * on
    assert chunk_size(True, 320) == 2**18 * on and chunk_size(0, 151_936) == chunk_size(False, 151_936) == 0
    with pytest.raises(ValueError, match="loss_chunk"):
        chunk_size(-3, 320)
    model = tiny(GPT, vocab=AUTO_VOCABULARY + 1)
    arguments = build(TrainingSection, resolve(collect([TrainingSection]), {})).compile_arguments()
    model.compile(optimizer="sgd", **arguments)  # as the trainer compiles
    assert model.loss_chunk == chunk_size("auto", AUTO_VOCABULARY + 1) == 2048 * on
    model.compile(optimizer="sgd", loss="mse", loss_chunk=64)  # another loss wants logits
    assert model.loss_chunk == 0


@needs_jax("XLA's memory analysis of the compiled step")
def test_compiled_step_needs_far_less_memory_at_a_real_vocabulary():

    model = tiny(GPT, vocab=30_000)
    x, y = batch(vocab=30_000, rows=4, length=256)
    trainable = [v.value for v in model.trainable_variables]
    temporaries = {}
    for chunk in (0, 256):
        compiled = step_function(model, chunk).lower(trainable, x, y).compile()
        temporaries[chunk] = compiled.memory_analysis().temp_size_in_bytes
    logits = 4 * 256 * 30_000 * 4  # float32 (B, T, vocab): 123 MB
    assert temporaries[0] > 2 * logits, temporaries  # the logits and their gradient
    # a chunk's logits (256 of the 1024 tokens) and their gradient, and the small rest
    assert temporaries[256] < 2.5 * logits * 256 / 1024, temporaries
