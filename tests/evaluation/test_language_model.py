import numpy as np
import pytest
from lm_fixtures import hand_loglikelihood, tiny_lm

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(block_size=24, batch_size=3)


def test_loglikelihood_equals_a_hand_computation_from_the_logits(lm):
    # (context, continuation) -> the text scored as context, and as continuation
    cases = [
        (("The cat sat on the", " mat"), "The cat sat on the", " mat"),
        (("Trailing space ", "moves"), "Trailing space", " moves"),  # the space goes with the continuation
        (("", "no context"), None, "no context"),  # None: the EOS token stands before it
        (
            ("a context longer than the window, so it is cut on the left", " end"),
            "a context longer than the window, so it is cut on the left",
            " end",
        ),
        (("x", "y"), "x", "y"),
    ]
    got = lm.loglikelihood([pair for pair, _, _ in cases])
    for (_, context, continuation), (logprob, greedy) in zip(cases, got):
        context_ids = [lm.prefix_id] if context is None else list(context.encode())
        tokens = (context_ids + list(continuation.encode()))[-(lm.max_length + 1) :]  # the window's tokens
        want, want_greedy = hand_loglikelihood(lm.model, tokens, len(continuation.encode()))
        assert logprob == pytest.approx(want, rel=1e-5)
        assert greedy == want_greedy


def test_the_greedy_continuation_is_greedy(lm):
    prompt = "Once upon a time"
    generated = lm.generate([prompt], max_new_tokens=5)[0]
    assert len(generated) == 5 and generated.isascii()
    ((_, greedy),) = lm.loglikelihood([(prompt, generated)])
    ((_, other),) = lm.loglikelihood([(prompt, generated[:-1] + chr(ord(generated[-1]) ^ 1))])
    assert greedy and not other


def test_generation_leaves_room_for_the_prompt(lm):
    with pytest.raises(ConfigError, match="max_new_tokens=24 leaves no room"):
        lm.generate(["x"], max_new_tokens=24)
    assert len(lm.generate(["a prompt longer than what is left of the context"], max_new_tokens=20)[0]) == 20


def test_rolling_windows_predict_every_token_once_with_most_context(lm):
    tokens = list(range(40, 40 + 57))
    windows = lm.rolling_windows(tokens)
    predicted = [t for window, n in windows for t in window[-n:]]
    assert predicted == tokens
    assert windows[0][0][0] == lm.prefix_id
    assert all(len(window) - 1 <= lm.max_length for window, _ in windows)
    assert len(windows[-1][0]) - 1 == lm.max_length  # the last, short window still sees a full context


def test_rolling_loglikelihood_is_the_sum_over_its_windows(lm):
    text = "A text of about three windows, to be scored whole, token by token."
    (got,) = lm.rolling_loglikelihood([text])
    want = sum(hand_loglikelihood(lm.model, window, n)[0] for window, n in lm.rolling_windows(lm.encode(text)))
    assert got == pytest.approx(want, rel=1e-5)


def test_held_out_batches_score_what_keras_evaluate_scores(lm):
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 257, (4, 24)), rng.integers(0, 257, (4, 24))) for _ in range(2)]
    batches[1][1][:, :5] = IGNORE_INDEX
    total, count, rows = lm.score_batches(batches)
    assert count == 2 * 4 * 24 - 4 * 5 and sum(len(r) for r in rows) == count
    lm.model.compile()
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    # Keras averages per batch, then over batches: weight each batch by its targets.
    per_batch = [
        lm.model.evaluate(bx, by, verbose=0, batch_size=4) for bx, by in zip(x.reshape(2, 4, 24), y.reshape(2, 4, 24))
    ]
    counts = [(by != IGNORE_INDEX).sum() for _, by in batches]
    assert -total / count == pytest.approx(np.dot(per_batch, counts) / count, rel=1e-5)
