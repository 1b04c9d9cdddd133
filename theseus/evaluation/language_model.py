"""`LanguageModel`: a model and its tokenizer, scored and sampled by compiled functions.

Every evaluation (and the lm-evaluation-harness adapter) asks a model the same three
questions, the ones lm-evaluation-harness defines: the log-likelihood of a continuation
given a context, the log-likelihood of a whole text (rolling windows, for perplexity), and
a generated continuation. Text is tokenized as the harness's own Hugging Face model does
(the context's trailing spaces move into the continuation; context and continuation are
encoded together and split; an empty context is the tokenizer's EOS), so theseus's
evaluators and the harness score the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError
from theseus.generation import Generator, compile_for_backend, stream_text

LENGTH_MULTIPLE = 32
"""Scored batches are right-padded to a multiple of this, so few shapes compile."""


class LanguageModel:
    """Log-likelihoods and generations of `model` over text, in batches.

    Args:
        model: a built causal LM (token ids -> float32 logits) with `block_size`, and for
            generation `init_cache` / `call_with_cache` (see `theseus.generation`).
        tokenizer: `encode(text)`, `decode(ids)` and `eos_id` (theseus's tokenizers).
        batch_size: sequences per compiled call.
        max_length: tokens per scored window (default: the model's `block_size`).
        heldout: a function returning `(inputs, targets)` batches held out from training
            (a trainer's validation set), for evaluations that want one (`Perplexity`).

    Example:
        >>> lm = LanguageModel(model, ByteTokenizer())
        >>> lm.loglikelihood([("The capital of France is", " Paris")])
        [(-3.2, True)]
    """

    def __init__(
        self,
        model: keras.Model,
        tokenizer: Any,
        batch_size: int = 8,
        max_length: int | None = None,
        heldout: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.heldout = model, tokenizer, heldout
        self.batch_size = batch_size
        self.max_length = max_length or model.block_size
        self.generator = Generator(model, pad_id=tokenizer.eos_id)
        self._score = compile_for_backend(model, self._score_batch)

    @property
    def prefix_id(self) -> int:
        """The token that stands before a text's first token (what the harness uses: EOS)."""
        return self.tokenizer.eos_id

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    # ------------------------------------------------------------------ token level

    def _score_batch(self, inputs, targets, weights):
        """Per row: the summed log-probability of the weighted targets, and whether each
        weighted target was the most likely token."""
        logits = ops.cast(self.model(inputs), "float32")  # (B, T, V)
        logp = ops.log_softmax(logits, axis=-1)
        chosen = ops.take_along_axis(logp, ops.expand_dims(targets, -1), axis=-1)[..., 0]  # (B, T)
        greedy = ops.logical_or(ops.argmax(logits, axis=-1) == targets, weights == 0)
        return ops.sum(chosen * weights, axis=-1), ops.all(greedy, axis=-1)

    def score_tokens(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[tuple[float, bool]]:
        """For each `(tokens, n)`: log p of the last `n` tokens given everything before
        them, and whether greedy decoding would produce them.

        Inputs longer than `max_length` keep their last `max_length` tokens (the scored
        ones must fit). Requests are batched longest first, as the harness does.
        """
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            inputs, targets, weights = self._batch([requests[i] for i in rows])
            total, greedy = self._score(inputs, targets, weights)
            total, greedy = ops.convert_to_numpy(total), ops.convert_to_numpy(greedy)
            for row, index in enumerate(rows):
                results[index] = (float(total[row]), bool(greedy[row]))
        return results  # type: ignore[return-value]

    def _batch(self, requests: list[tuple[Sequence[int], int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        windows = []
        for tokens, n in requests:
            if not 1 <= n < len(tokens) or n > self.max_length:
                raise ValueError(
                    f"cannot score the last {n} of {len(tokens)} tokens with a {self.max_length}-token window"
                )
            windows.append((list(tokens[-self.max_length - 1 :]), n))
        longest = max(len(w) - 1 for w, _ in windows)
        width = min(-(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE, self.max_length)
        inputs = np.full((self.batch_size, width), self.prefix_id, "int32")
        targets = np.zeros((self.batch_size, width), "int32")
        weights = np.zeros((self.batch_size, width), "float32")
        for row, (window, n) in enumerate(windows):
            length = len(window) - 1  # right-padded: causal attention never sees the padding
            inputs[row, :length] = window[:-1]
            targets[row, :length] = window[1:]
            weights[row, length - n : length] = 1.0
        return inputs, targets, weights

    def rolling_windows(self, tokens: Sequence[int]) -> list[tuple[list[int], int]]:
        """Score requests that predict every token of `tokens` exactly once, from the prefix
        token on, each window with as much context as `max_length` allows (the harness's
        `loglikelihood_rolling`)."""
        sequence = [self.prefix_id, *map(int, tokens)]
        requests = []
        for start in range(1, len(sequence), self.max_length):
            end = min(start + self.max_length, len(sequence))
            requests.append((sequence[max(0, end - 1 - self.max_length) : end], end - start))
        return requests

    def score_batches(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int, list[np.ndarray]]:
        """Summed log p and count of the targets of `(inputs, targets)` batches (a trainer's
        validation set; `IGNORE_INDEX` targets do not count); also each row's targets."""
        total, count, rows = 0.0, 0, []
        for inputs, targets, *_ in batches:  # a validation batch also holds its sample weights
            inputs, targets = np.asarray(inputs, "int32"), np.asarray(targets)
            weights = (targets != IGNORE_INDEX).astype("float32")
            logp, _ = self._score(inputs, np.where(weights > 0, targets, 0).astype("int32"), weights)
            total += float(np.sum(ops.convert_to_numpy(logp)))
            count += int(weights.sum())
            rows.extend(t[t != IGNORE_INDEX] for t in targets)
        return total, count, rows

    # ------------------------------------------------------------------ text level

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, split as lm-evaluation-harness splits them."""
        if context == "":
            continuation_ids = self.encode(continuation)
            if continuation_ids and continuation_ids[0] == self.prefix_id:
                return continuation_ids[:1], continuation_ids[1:]
            return [self.prefix_id], continuation_ids
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids) :]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """log p(continuation | context) and whether it is the greedy continuation, per pair."""
        requests = []
        for context, continuation in pairs:
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            if not continuation_ids:
                raise ValueError(f"continuation {continuation!r} of context {context[-40:]!r} has no tokens")
            requests.append((context_ids + continuation_ids, len(continuation_ids)))
        return self.score_tokens(requests)

    def rolling_loglikelihood(self, texts: Sequence[str]) -> list[float]:
        """log p of each whole text (its first token conditioned on the prefix token)."""
        requests, owners = [], []
        for index, text in enumerate(texts):
            windows = self.rolling_windows(self.encode(text))
            requests.extend(windows)
            owners.extend([index] * len(windows))
        totals = [0.0] * len(texts)
        for owner, (logp, _) in zip(owners, self.score_tokens(requests)):
            totals[owner] += logp
        return totals

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        until: Sequence[str] = (),
        **settings: Any,
    ) -> list[str]:
        """Continuations of `prompts`, cut before the first of the `until` strings.

        Generation stops at the tokenizer's EOS; prompts longer than the context keep
        their last tokens. `settings` go to `Generator` (temperature, top_k, top_p, seed).
        """
        ids = self._prompt_ids(prompts, max_new_tokens)
        out = self.generator(
            ids, max_new_tokens, stop_token_ids=[self.tokenizer.eos_id], batch_size=self.batch_size, **settings
        )
        texts = []
        for tokens in out.tokens:
            text = self.tokenizer.decode([t for t in tokens if t != self.tokenizer.eos_id])
            for stop in until:
                if stop:
                    text = text.split(stop, 1)[0]
            texts.append(text)
        return texts

    def stream(self, prompt: str, max_new_tokens: int = 32, **settings: Any) -> Iterator[str]:
        """The continuation of one prompt in pieces, each yielded as soon as it is generated
        (`Generator.stream`, `stream_text`); they join to `generate([prompt], ...)[0]`."""
        eos = self.tokenizer.eos_id
        ids = self._prompt_ids([prompt], max_new_tokens)[0]
        tokens = self.generator.stream(ids, max_new_tokens, stop_token_ids=[eos], **settings)
        return stream_text((t for t in tokens if t != eos), self.tokenizer.decode)

    def _prompt_ids(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """Each prompt's tokens (the prefix token for an empty one), the last ones of a
        prompt that leaves no room for `max_new_tokens` in the context."""
        keep = self.model.block_size - max_new_tokens
        if keep < 1:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's {self.model.block_size}-token context"
            )
        return [(self.encode(p) or [self.prefix_id])[-keep:] for p in prompts]


def bits_per_byte(logprob: float, n_bytes: int) -> float:
    """Negative log-likelihood in bits per UTF-8 byte of the evaluated text."""
    return -logprob / (n_bytes * math.log(2)) if n_bytes else float("nan")
