import math

import numpy as np
import pytest
from lm_fixtures import hand_loglikelihood, tiny_lm

from theseus.config import ConfigError
from theseus.evaluation.text_perplexity import Perplexity

DOCUMENTS = [
    "A first document, long enough to need more than one window of the model's context.",
    "Zweites Dokument: Grüße aus Köln, mit Umlauten (zwei Bytes, zwei Byte-Tokens je Zeichen).",
]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(block_size=32, batch_size=4)


def test_perplexity_of_a_folder_of_documents_by_hand(lm, tmp_path):
    for number, text in enumerate(DOCUMENTS):
        (tmp_path / f"{number}.txt").write_text(text, encoding="utf-8")
    got = Perplexity(str(tmp_path))(lm)
    # By hand: every token of every document predicted once, the first from EOS, each
    # window with a full forward pass; bytes are the documents' UTF-8 bytes.
    logprob = sum(hand_loglikelihood(lm.model, w, n)[0] for d in DOCUMENTS for w, n in lm.rolling_windows(d.encode()))
    tokens = sum(len(d.encode()) for d in DOCUMENTS)
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCUMENTS)
    assert got["tokens"] == tokens and got["bytes"] == n_bytes
    assert got["nll"] == pytest.approx(-logprob / tokens, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(-logprob / tokens), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(-logprob / n_bytes / math.log(2), rel=1e-5)


def test_held_out_batches_give_bits_per_decoded_byte(lm):
    rng = np.random.default_rng(3)
    windows = rng.integers(97, 123, (6, 33))  # lowercase letters: one byte each
    windows[:, 10] = 256  # EOS between documents: a token, but no byte
    batches = [(windows[i : i + 3, :-1], windows[i : i + 3, 1:]) for i in (0, 3)]
    lm.heldout = lambda: iter(batches)
    try:
        got = Perplexity()(lm)
    finally:
        lm.heldout = None
    logprob = sum(hand_loglikelihood(lm.model, list(w), 32)[0] for w in windows)
    assert got["tokens"] == 6 * 32 and got["bytes"] == 6 * 31
    assert got["nll"] == pytest.approx(-logprob / (6 * 32), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(-logprob / (6 * 31) / math.log(2), rel=1e-5)


def test_without_a_source_or_held_out_set_it_says_what_to_give(lm, tmp_path):
    with pytest.raises(ConfigError, match="perplexity:PATH"):
        Perplexity()(lm)
    with pytest.raises(ConfigError, match="perplexity:"):
        Perplexity(str(tmp_path / "missing.txt"))
