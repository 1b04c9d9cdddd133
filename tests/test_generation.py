import json
import sys

import keras
import numpy as np
import pytest
from hf_checkpoints import FAMILIES, hf_model
from hf_checkpoints import tokenizer as bpe_tokenizer
from keras import ops
from support import run_command

from theseus.config import ConfigError
from theseus.data import ByteTokenizer
from theseus.generation import Generator, choose_tokens, stream_text
from theseus.model.huggingface import HFCompat
from theseus.model.models import GPT

TINY = dict(vocab_size=61, block_size=40, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False)
PROMPTS = [[3, 14, 15, 9, 26], [5, 35], [8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2]]


def tiny_gpt(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    model = GPT(**{**TINY, **overrides})
    model.build((None, TINY["block_size"]))
    return model


def full_logits(model, sequence):
    """The reference: a full forward pass over one whole (unpadded) sequence, (T, vocab).

    Row t is what a forward pass over the first t + 1 tokens gives (attention is causal,
    as tests/model/models/test_gpt.py checks)."""
    return ops.convert_to_numpy(model(np.asarray([sequence], "int32")))[0]


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_cached_logits_equal_a_full_forward_at_every_step(position):
    model = tiny_gpt(position=position)
    out = Generator(model)(PROMPTS, max_new_tokens=12, return_scores=True)
    for prompt, tokens, scores in zip(PROMPTS, out.tokens, out.scores):
        assert len(tokens) == 12 and scores.shape == (12, TINY["vocab_size"])
        reference = full_logits(model, prompt + tokens)[len(prompt) - 1 : -1]  # (12, vocab)
        np.testing.assert_allclose(scores, reference, atol=1e-4, rtol=0)
        assert tokens == np.argmax(reference, axis=-1).tolist()
    assert any(len(set(tokens)) > 2 for tokens in out.tokens)  # not a degenerate repetition


def test_a_padded_batch_samples_what_each_prompt_samples_alone():
    model = tiny_gpt(position="rope")
    settings = dict(max_new_tokens=10, temperature=0.9, top_k=20, top_p=0.95, seed=7)
    generator = Generator(model)
    together = generator(PROMPTS, **settings).tokens
    alone = generator(PROMPTS, batch_size=1, **settings).tokens
    assert together == alone
    assert generator(PROMPTS, **settings).tokens == together
    assert generator(PROMPTS, **{**settings, "seed": 8}).tokens != together


def test_sampled_tokens_follow_the_rows_own_distribution():
    """Each sampled token is one the filters allow, for the logits the cache produced."""
    model = tiny_gpt()
    out = Generator(model)(PROMPTS, max_new_tokens=8, temperature=0.7, top_k=5, seed=3, return_scores=True)
    for tokens, scores in zip(out.tokens, out.scores):
        for token, logits in zip(tokens, scores):
            assert logits[token] >= np.sort(logits)[-5]


def test_a_stop_token_ends_its_row_only():
    model = tiny_gpt()
    generator = Generator(model)
    free = generator(PROMPTS, max_new_tokens=12).tokens
    stop = free[0][3]
    first = {row: tokens.index(stop) for row, tokens in enumerate(free) if stop in tokens}
    out = generator(PROMPTS, max_new_tokens=12, stop_token_ids=[stop]).tokens
    for row, tokens in enumerate(free):
        expected = tokens[: first[row] + 1] if row in first else tokens
        assert out[row] == expected
    assert len(out[0]) == first[0] + 1 <= 4


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.3, 4, 1.0), (1.0, 0, 0.6), (0.8, 6, 0.7)],
)
def test_sampling_draws_from_the_filtered_softmax(temperature, top_k, top_p):
    vocab, draws = 12, 20_000
    logits = np.random.default_rng(0).normal(0, 1.5, vocab).astype("float32")
    # The expected distribution, by hand: temperature, then top-k, then top-p on what remains.
    probs = np.exp(logits / temperature - (logits / temperature).max())
    if top_k:
        probs[np.argsort(-logits)[top_k:]] = 0
    probs /= probs.sum()
    if top_p < 1:
        order = np.argsort(-probs)
        above = np.cumsum(probs[order]) - probs[order]
        probs[order[above >= top_p]] = 0
        probs /= probs.sum()
    tokens = choose_tokens(
        np.tile(logits, (draws, 1)), 11, np.arange(draws), 0, temperature, top_k, top_p if top_p < 1 else None
    )
    counts = np.bincount(ops.convert_to_numpy(tokens), minlength=vocab) / draws
    assert np.all(counts[probs == 0] == 0)
    np.testing.assert_allclose(counts, probs, atol=5 * np.sqrt(0.25 / draws))


def test_a_tiny_top_p_keeps_only_the_best_token():
    logits = np.tile(np.array([[0.0, 5.0, 1.0, 4.9]], "float32"), (500, 1))
    for top_k in (0, 3):
        tokens = choose_tokens(logits, 1, np.arange(500), 0, 1.0, top_k, top_p=1e-6)
        assert set(ops.convert_to_numpy(tokens).tolist()) == {1}


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=40), "context"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    generator = Generator(tiny_gpt())
    with pytest.raises(ConfigError, match=message):
        generator(PROMPTS, **{"max_new_tokens": 4, **settings})
    with pytest.raises(ConfigError, match=message):  # when asked, before the first token is
        generator.stream(PROMPTS[0], **{"max_new_tokens": 4, **settings})
    with pytest.raises(ConfigError, match="vocabulary"):
        generator([[1, 99]], 4)


def test_streamed_tokens_are_the_tokens_generated_at_once():
    """`stream` yields, one at a time, what `__call__` returns for the prompt: greedy (also
    in a padded batch), sampled with the same seed, and up to a stop token."""
    generator = Generator(tiny_gpt(position="rope"))
    prompts = PROMPTS[:2]  # one padded width: few shapes to compile
    assert [list(generator.stream(prompt, 12)) for prompt in prompts] == generator(prompts, 12).tokens
    sampled = dict(temperature=0.9, top_k=20, top_p=0.95, seed=7)
    alone = generator([prompts[1]], 12, **sampled).tokens[0]
    assert list(generator.stream(prompts[1], 12, **sampled)) == alone
    stop = alone[3]
    assert list(generator.stream(prompts[1], 12, stop_token_ids=[stop], **sampled)) == alone[: alone.index(stop) + 1]


def test_streamed_text_is_the_decoded_text_piece_by_piece():
    """Tokens split in the middle of UTF-8 characters (bytes, byte-level BPE) print only once
    the character is whole, and a space a tokenizer's clean-up drops is never printed."""
    text = "héllo 😀 wörld, the quick fox . ok"
    byte, bpe = ByteTokenizer(), bpe_tokenizer()
    bpe_ids = bpe(text, add_special_tokens=False)["input_ids"]
    cases = [
        (byte.encode(text).tolist(), byte.decode),
        (bpe_ids, bpe.decode),
        (bpe_ids, lambda ids: bpe.clean_up_tokenization(bpe.decode(ids))),  # "fox ." -> "fox." (as WordPiece)
    ]
    for ids, decode in cases:
        pieces = list(stream_text(ids, decode))
        assert "".join(pieces) == decode(ids)
        assert len(pieces) > 10 and not any("\ufffd" in piece for piece in pieces)
    assert cases[2][1](bpe_ids).endswith("fox. ok")
    consumed = []

    def tokens():
        for token in bpe_ids:
            consumed.append(token)
            yield token

    assert next(stream_text(tokens(), bpe.decode)) == "h" and len(consumed) == 1  # printed as it comes


CROSS_BACKEND = """
import json, sys
import keras, numpy as np
from theseus.generation import Generator
from theseus.model.models import GPT
model = GPT(**json.loads(sys.argv[2]))
model.build((None, model.block_size))
model.load_weights(sys.argv[1])
prompts = json.loads(sys.argv[3])
generator = Generator(model)
greedy = generator(prompts, 8, return_scores=True)
sampled = generator(prompts, 8, temperature=0.8, top_k=30, top_p=0.9, seed=5)
print(json.dumps({"greedy": greedy.tokens, "sampled": sampled.tokens,
                  "scores": [s.tolist() for s in greedy.scores]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_generation_is_the_same_on_every_backend(backend, tmp_path):
    """Same weights and seed: the same greedy and sampled tokens, logits within 1e-4."""
    model = tiny_gpt(position="rope")
    model.save_weights(tmp_path / "gpt.weights.h5")
    generator = Generator(model)
    greedy = generator(PROMPTS, 8, return_scores=True)
    sampled = generator(PROMPTS, 8, temperature=0.8, top_k=30, top_p=0.9, seed=5)
    config = json.dumps({**TINY, "position": "rope"})
    result = run_command(
        [sys.executable, "-c", CROSS_BACKEND, str(tmp_path / "gpt.weights.h5"), config, json.dumps(PROMPTS)],
        env={"KERAS_BACKEND": backend},
        check=True,
    )
    other = json.loads(result.stdout.strip().splitlines()[-1])
    assert other["greedy"] == greedy.tokens
    assert other["sampled"] == sampled.tokens
    for mine, theirs in zip(greedy.scores, other["scores"]):
        np.testing.assert_allclose(np.asarray(theirs), mine, atol=1e-4, rtol=0)


HF_PROMPTS = [[17, 250, 3, 99, 42, 7, 130], [5, 300], [64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_hugging_face_models_generate_what_transformers_generates(family, tmp_path):
    """A random checkpoint of each family: greedy tokens equal `transformers`' own greedy
    `generate` on each prompt alone (theseus runs them as one left-padded batch), and the
    cached logits equal a full forward pass at every step."""
    import torch

    reference = hf_model(family, seed=1)
    reference.save_pretrained(str(tmp_path))
    model = HFCompat(id=str(tmp_path))  # a GPT or Llama inside, its cache reached through HFCompat
    eos = reference.generation_config.eos_token_id
    stop = [eos] if isinstance(eos, int) else list(eos or [])
    out = Generator(model)(HF_PROMPTS, max_new_tokens=10, stop_token_ids=stop, return_scores=True)
    for prompt, tokens, scores in zip(HF_PROMPTS, out.tokens, out.scores):
        with torch.no_grad():
            expected = reference.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        assert tokens == expected
        np.testing.assert_allclose(scores, full_logits(model, prompt + tokens)[len(prompt) - 1 : -1], atol=1e-4, rtol=0)
    assert any(len(set(tokens)) > 2 for tokens in out.tokens)  # not a degenerate repetition
