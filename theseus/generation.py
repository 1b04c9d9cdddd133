"""Text generation with a key/value cache, written once for every model family.

A family supports generation by implementing two methods (`GPT` shows how):

    init_cache(batch_size, max_length) -> cache
    call_with_cache(token_ids, cache, cache_index, padding_mask) -> (logits, cache)

`Generator` left-pads a batch of prompts of different lengths, runs all prompts through the
model in one call (prefill), then picks one token per step inside one compiled
`keras.ops.while_loop`: greedy, or sampled with temperature, top-k and top-p, until every
row has produced a stop token or `max_new_tokens`. Each row's positions count only its real
tokens and the attention mask hides its padding (`theseus.model.layers.attention`'s
`cache_positions` and `cache_attention_mask`), so a row generates what it would alone.
`Generator.stream` runs the same prefill and steps for one prompt as one compiled call per
token, yielding each as it is chosen; `stream_text` turns those tokens into printable text.

Sampling noise is a counter-based hash of `(seed, row, step, token)` in `keras.ops`
integer arithmetic rather than `keras.random`: a compiled loop needs a fresh stateless seed
per step, which `keras.random` accepts only on JAX; the hash gives the same draws on every
backend and for any batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from theseus.config import ConfigError

PAD_MULTIPLE = 8
"""Prompt blocks are left-padded to a multiple of this, so few prompt lengths compile."""


def compile_for_backend(model: keras.Model, fn: Callable) -> Callable:
    """`fn(*tensors)` compiled for the Keras backend, reading `model`'s weights at each call.

    On JAX the weights are passed in through a `StatelessScope` (a jitted closure would
    freeze them as constants, stale once training moves on); TensorFlow traces a
    `tf.function` with XLA; torch runs eagerly without autograd.
    """
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return fn(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in model.variables], *args)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import torch

    def eager(*args):
        with torch.no_grad():
            return fn(*args)

    return eager


# ----------------------------------------------------------------------------- sampling


def _mix(x):
    """A bijective 32-bit integer hash ("lowbias32") in int32 arithmetic that wraps."""
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))  # logical shift
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, "int32"))
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 15), 0x1FFFF))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B - (1 << 32), "int32"))
    return ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))


def uniform_noise(seed, rows, step, vocab_size: int, token_ids):
    """Floats in (0, 1) shaped like `token_ids` (B, n): a pure function of (seed, global
    row, step, token id), so a token draws the same noise whichever candidates it is among."""
    stream = _mix(ops.bitwise_xor(_mix(ops.cast(seed, "int32")), ops.cast(step, "int32")))
    index = ops.cast(rows, "int32")[:, None] * vocab_size + ops.cast(token_ids, "int32")
    bits = _mix(ops.bitwise_xor(_mix(index), stream))
    return (ops.cast(ops.bitwise_and(ops.right_shift(bits, 8), 0xFFFFFF), "float32") + 0.5) / float(1 << 24)


def nucleus(ordered, top_p):
    """`ordered` logits (B, n), descending, with -inf outside the smallest prefix whose
    probability reaches `top_p` (always at least the first)."""
    probs = ops.softmax(ordered, axis=-1)
    before = ops.cumsum(probs, axis=-1) - probs  # the mass ranked above each candidate
    return ops.where(before < top_p, ordered, float("-inf"))


def choose_tokens(logits, seed, rows, step, temperature, top_k: int = 0, top_p=None, greedy: bool = False):
    """The next token of each row (B,): the argmax, or a draw from `softmax(logits /
    temperature)` restricted to the `top_k` most likely tokens and then to the smallest set
    holding `top_p` of their probability (the order `transformers` applies them in).

    A draw is Gumbel-max, `argmax(logits + Gumbel noise)`, over the candidates only: the
    top-k, found with `top_k` (a full sort of the vocabulary, which XLA does slowly on CPU,
    only for top-p without top-k).
    """
    if greedy:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    logits = ops.cast(logits, "float32") / temperature
    vocab_size = ops.shape(logits)[-1]
    if top_k == 0 and top_p is None:  # every token a candidate: the pick is the token id
        gumbel = -ops.log(-ops.log(uniform_noise(seed, rows, step, vocab_size, ops.arange(vocab_size)[None])))
        return ops.cast(ops.argmax(logits + gumbel, axis=-1), "int32")
    values, candidates = ops.top_k(logits, top_k if top_k > 0 else vocab_size)  # (B, k) descending
    if top_p is not None:
        values = nucleus(values, top_p)
    gumbel = -ops.log(-ops.log(uniform_noise(seed, rows, step, vocab_size, candidates)))
    pick = ops.argmax(values + gumbel, axis=-1)
    return ops.cast(ops.take_along_axis(candidates, pick[:, None], axis=-1)[:, 0], "int32")


# ----------------------------------------------------------------------------- generator


@dataclasses.dataclass
class Generation:
    """What `Generator` returns, one entry per prompt.

    Attributes:
        tokens: the new tokens, up to and including the first stop token.
        scores: with `return_scores`, the float32 logits (n_new, vocab) each token was
            chosen from (before temperature and filters).
    """

    tokens: list[list[int]]
    scores: list[np.ndarray] | None = None


class Generator:
    """Continue prompts (lists of token ids) with a model that has a key/value cache.

    Compiles one generation loop per (batch size, padded prompt length, settings) and
    reuses it; weights are read at every call, so it stays valid while a model trains.

    Args:
        model: a built model with `init_cache`, `call_with_cache`, `vocab_size` and
            `block_size` (its context length).
        pad_id: the token id written as padding (never attended to).

    Example:
        >>> generator = Generator(model)
        >>> out = generator([[5, 6, 7], [9]], max_new_tokens=20, temperature=0.8, top_p=0.9, seed=1)
        >>> out.tokens[1]
    """

    def __init__(self, model: keras.Model, pad_id: int = 0) -> None:
        self.model = model
        self.pad_id = pad_id
        self._compiled: dict[tuple, Callable] = {}

    def __call__(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        stop_token_ids: Sequence[int] = (),
        seed: int = 0,
        batch_size: int | None = None,
        return_scores: bool = False,
    ) -> Generation:
        """Generate up to `max_new_tokens` after each prompt.

        Args:
            temperature: 0 is greedy decoding; above 0 samples from `softmax(logits / temperature)`.
            top_k: sample only among the k most likely tokens (0 = all).
            top_p: sample only from the smallest set of tokens holding this probability (1 = all).
            stop_token_ids: a row stops after producing any of these (e.g. end-of-sequence).
            seed: the same seed gives the same samples, on every backend and batch size.
            batch_size: prompts per compiled call (default: all at once); the last batch
                is filled with dummy rows so every call has the same shape.
            return_scores: also return the logits every new token was chosen from.
        """
        prompts = [[int(t) for t in p] for p in prompts]
        self._check(prompts, max_new_tokens, temperature, top_k, top_p)
        batch_size = batch_size or len(prompts)
        greedy = temperature == 0
        key = (max_new_tokens, greedy, 0 if greedy else top_k, not greedy and top_p < 1.0, return_scores)
        if key not in self._compiled:
            self._compiled[key] = compile_for_backend(self.model, self._loop(*key))
        run = self._compiled[key]
        stop = np.asarray(sorted(set(int(t) for t in stop_token_ids)), "int32")
        tokens: list[list[int]] = []
        scores: list[np.ndarray] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids, mask = self._left_pad(chunk + [[self.pad_id]] * (batch_size - len(chunk)))
            out = run(
                ids,
                mask,
                np.float32(max(temperature, 1e-6)),
                np.float32(top_p),
                np.int32(seed),
                np.int32(start),
                stop,
            )
            new = ops.convert_to_numpy(out[0])
            logits = ops.convert_to_numpy(out[1]) if return_scores else None
            for row in range(len(chunk)):
                length = _length_until_stop(new[row], stop)
                tokens.append(new[row, :length].tolist())
                if return_scores:
                    scores.append(logits[row, :length])
        return Generation(tokens, scores if return_scores else None)

    def _check(self, prompts, max_new_tokens, temperature, top_k, top_p) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("generation needs at least one prompt, and no prompt may be empty")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not 0.0 < top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
        vocab = self.model.vocab_size
        if top_k > vocab:
            raise ConfigError(f"top_k={top_k} is larger than the vocabulary ({vocab})")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.model.block_size:
            raise ConfigError(
                f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the "
                f"model's context of {self.model.block_size} tokens"
            )
        bad = [t for p in prompts for t in p if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")

    def _left_pad(self, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        longest = max(len(p) for p in prompts)
        width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE  # padding takes a slot, not a position
        ids = np.full((len(prompts), width), self.pad_id, "int32")
        mask = np.zeros((len(prompts), width), bool)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = True
        return ids, mask

    def _loop(self, max_new: int, greedy: bool, top_k: int, use_top_p: bool, with_scores: bool) -> Callable:
        """The compiled function: prefill, then one token per `while_loop` step."""
        model = self.model
        pad_id = self.pad_id

        def generate(prompt, prompt_mask, temperature, top_p, seed, row_offset, stop):
            batch, length = ops.shape(prompt)[0], ops.shape(prompt)[1]
            logits, cache, padding = self._prefill(prompt, prompt_mask, max_new)
            rows = ops.arange(batch, dtype="int32") + row_offset
            state = (
                ops.convert_to_tensor(0, "int32"),
                logits,  # (B, V): the distribution of the first new token
                ops.full((batch, max_new), pad_id, "int32"),
                ops.zeros((batch,), "bool"),
                cache,
            )
            if with_scores:
                state += (ops.zeros((batch, max_new, model.vocab_size), "float32"),)

            def cond(step, logits, tokens, done, cache, *scores):
                return ops.logical_and(step < max_new, ops.logical_not(ops.all(done)))

            def body(step, logits, tokens, done, cache, *scores):
                token = choose_tokens(
                    logits, seed, rows, step, temperature, top_k, top_p if use_top_p else None, greedy
                )
                token = ops.where(done, pad_id, token)
                tokens = ops.slice_update(tokens, [0, step], token[:, None])
                if with_scores:
                    scores = (ops.slice_update(scores[0], [0, step, 0], logits[:, None, :]),)
                done = ops.logical_or(done, ops.any(token[:, None] == stop[None, :], axis=1))
                logits, cache = self._advance(token, cache, length + step, padding)
                return (step + 1, logits, tokens, done, cache, *scores)

            final = ops.while_loop(cond, body, state, maximum_iterations=max_new)
            return (final[2], final[5]) if with_scores else (final[2],)

        return generate

    def _prefill(self, prompt, prompt_mask, max_new: int):
        """The prompts (B, T) into a fresh cache with room for `max_new` more tokens: the
        logits of the first new token (B, V), the cache, and the padding mask (B, T + max_new)."""
        batch, length = ops.shape(prompt)[0], ops.shape(prompt)[1]
        padding = ops.concatenate([prompt_mask, ops.ones((batch, max_new), "bool")], axis=1)
        cache = self.model.init_cache(batch, length + max_new)
        logits, cache = self.model.call_with_cache(prompt, cache, 0, padding)
        return logits[:, -1], cache, padding

    def _advance(self, token, cache, index, padding):
        """The chosen tokens (B,) into cache slot `index`: the next logits (B, V) and the cache."""
        logits, cache = self.model.call_with_cache(token[:, None], cache, index, padding)
        return logits[:, 0], cache

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int = 32, *, stop_token_ids: Sequence[int] = (), **sampling: Any
    ) -> Iterator[int]:
        """The new tokens of one prompt, yielded one at a time as each is chosen.

        They are the tokens `self([prompt], ...)` returns with the same `sampling` settings
        (`temperature`, `top_k`, `top_p`, `seed`, as there: the same seed draws the same
        samples), up to and including the first stop token. Each token is one compiled call
        (after one for the prompt), the cache staying on the device between calls. Bad
        settings are refused here, before the first token is asked for.
        """
        return self._stream([int(t) for t in prompt], max_new_tokens, stop_token_ids, **sampling)

    def _stream(self, prompt, max_new_tokens, stop_token_ids, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        self._check([prompt], max_new_tokens, temperature, top_k, top_p)
        greedy = temperature == 0
        key = ("stream", max_new_tokens, greedy, 0 if greedy else top_k, not greedy and top_p < 1.0)
        if key not in self._compiled:
            self._compiled[key] = self._stream_functions(max_new_tokens, *key[2:])
        settings = (np.float32(max(temperature, 1e-6)), np.float32(top_p), np.int32(seed))
        return self._steps(prompt, max_new_tokens, *self._compiled[key], settings, stop_token_ids)

    def _stream_functions(self, max_new: int, greedy: bool, top_k: int, use_top_p: bool) -> tuple[Callable, Callable]:
        """Compiled prefill (prompt -> logits, cache, padding) and step (-> token, logits, cache)."""

        def prefill(prompt, prompt_mask):
            return self._prefill(prompt, prompt_mask, max_new)

        def next_token(logits, cache, padding, index, step, temperature, top_p, seed):
            rows = ops.zeros((1,), "int32")  # row 0, as `__call__` numbers a single prompt
            token = choose_tokens(logits, seed, rows, step, temperature, top_k, top_p if use_top_p else None, greedy)
            return (token, *self._advance(token, cache, index, padding))

        return compile_for_backend(self.model, prefill), compile_for_backend(self.model, next_token)

    def _steps(self, prompt, max_new, prefill, next_token, settings, stop_token_ids) -> Iterator[int]:
        stop = {int(t) for t in stop_token_ids}
        ids, mask = self._left_pad([prompt])
        logits, cache, padding = prefill(ids, mask)
        for step in range(max_new):
            index = np.int32(ids.shape[1] + step)  # the cache slot the chosen token goes into
            token, logits, cache = next_token(logits, cache, padding, index, np.int32(step), *settings)
            token = int(ops.convert_to_numpy(token)[0])
            yield token
            if token in stop:
                return


def stream_text(tokens: Iterable[int], decode: Callable[[list[int]], str]) -> Iterator[str]:
    """The text of `tokens` in pieces, each as soon as it is safe to print, joining to
    `decode(all tokens)` (decoding the tokens so far, as `transformers`' `TextStreamer` does).

    After each token the whole list is decoded again and only the new end is yielded, less
    what may still change: a byte-level BPE or byte token can hold part of a UTF-8 character
    (decoded as U+FFFD until the token that completes it), and a tokenizer that cleans up
    spaces (`" ."` -> `"."`) may drop a trailing space; both wait for the next token.
    """
    ids: list[int] = []
    printed = text = ""
    for token in tokens:
        ids.append(int(token))
        text = decode(ids)
        ready = text.rstrip(" \ufffd")
        if len(ready) > len(printed) and ready.startswith(printed):
            yield ready[len(printed) :]
            printed = ready
    if len(text) > len(printed) and text.startswith(printed):  # what was held back, at the end
        yield text[len(printed) :]


def _length_until_stop(tokens: np.ndarray, stop: np.ndarray) -> int:
    """Tokens up to and including the first stop token (all of them if none)."""
    hits = np.flatnonzero(np.isin(tokens, stop))
    return int(hits[0]) + 1 if len(hits) else len(tokens)
