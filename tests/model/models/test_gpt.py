import keras
import numpy as np
import pytest
from keras import ops

from theseus.base.targets import IGNORE_INDEX
from theseus.model.models import GPT
from theseus.training.schedules import WSD

SMALL = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_logits_shape_and_dtype():
    model = GPT(**SMALL)
    logits = model(np.zeros((3, 16), "int32"))
    assert tuple(logits.shape) == (3, 16, 64) and keras.backend.standardize_dtype(logits.dtype) == "float32"


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_attention_is_causal(position):
    model = GPT(**SMALL, position=position)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 64, (1, 16))
    b = a.copy()
    b[0, 10:] = rng.integers(0, 64, 6)
    la, lb = ops.convert_to_numpy(model(a)), ops.convert_to_numpy(model(b))
    np.testing.assert_allclose(la[0, :10], lb[0, :10], atol=1e-5)
    assert np.abs(la[0, 10:] - lb[0, 10:]).max() > 1e-3


def test_tied_head_is_the_embedding():
    tied, untied = GPT(**SMALL), GPT(**SMALL, tie_embeddings=False)
    tied.build((None, 16))
    untied.build((None, 16))
    assert untied.count_params() - tied.count_params() == 32 * 64
    x = np.arange(16)[None] % 64
    hidden_last = tied.ln_f(tied.blocks[-1](tied.blocks[0](tied.wte(x) + tied.wpe(np.arange(16)))))
    np.testing.assert_allclose(
        ops.convert_to_numpy(tied(x)),
        ops.convert_to_numpy(hidden_last) @ ops.convert_to_numpy(tied.wte.embeddings).T,
        atol=1e-4,
    )


def test_loss_ignores_masked_targets():
    model = GPT(**SMALL)
    model.compile()
    rng = np.random.default_rng(1)
    x = rng.integers(0, 64, (2, 16)).astype("int32")
    y = rng.integers(0, 64, (2, 16)).astype("int32")
    y[:, 8:] = IGNORE_INDEX
    logits = ops.convert_to_numpy(model(x)).astype(np.float64)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    want = -np.take_along_axis(logp[:, :8], y[:, :8, None], -1).mean()
    got = model.evaluate(x, y, verbose=0)
    assert got == pytest.approx(want, rel=1e-5)


def test_config_round_trip():
    model = GPT(**SMALL, position="rope", dropout=0.1)
    clone = GPT.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.position == "rope" and clone.n_layer == 2


def test_fit_in_a_user_script_with_a_wsd_schedule():
    """The plain-Keras path: build, compile with a theseus schedule, fit on numpy tokens."""
    keras.utils.set_random_seed(0)
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog. " * 40, np.uint8) % 64
    windows = np.lib.stride_tricks.sliding_window_view(text, 17)[::4].astype("int32")
    model = GPT(**SMALL)
    schedule = WSD(peak_lr=3e-3, total_steps=60, warmup=0.1, decay=0.3)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule))
    before = model.evaluate(windows[:, :-1], windows[:, 1:], verbose=0)
    history = model.fit(windows[:, :-1], windows[:, 1:], batch_size=16, epochs=60 * 16 // len(windows), verbose=0)
    after = model.evaluate(windows[:, :-1], windows[:, 1:], verbose=0)
    assert after < 0.5 * before, (before, after, history.history["loss"])
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        float(ops.convert_to_numpy(schedule(int(model.optimizer.iterations)))), rel=1e-6
    )
