"""A tiny random GPT that speaks ASCII, with the byte tokenizer, and hand computations
of log-likelihoods from its logits (float64 numpy) to check the evaluators against."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from theseus.data import ByteTokenizer
from theseus.evaluation.language_model import LanguageModel
from theseus.model.models import GPT


def ascii_gpt(seed: int = 0, block_size: int = 64) -> GPT:
    """Random weights, except that the output head scores every non-ASCII token 0: the
    greedy choice is then always an ASCII byte, so greedy text decodes and re-encodes to
    the same tokens."""
    keras.utils.set_random_seed(seed)
    model = GPT(vocab_size=257, block_size=block_size, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False)
    model.build((None, block_size))
    head = ops.convert_to_numpy(model.lm_head)
    head[:, 128:] = 0.0
    model.lm_head.assign(head * 20.0)  # sharper distributions: no near-ties in greedy choices
    return model


def tiny_lm(seed: int = 0, block_size: int = 64, **kwargs) -> LanguageModel:
    return LanguageModel(ascii_gpt(seed, block_size), ByteTokenizer(), **kwargs)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def hand_loglikelihood(model, tokens: list[int], n: int) -> tuple[float, bool]:
    """log p of the last `n` of `tokens` given the rest, from one full forward pass.

    The input is right-padded to the model's context (one shape, so eager calls reuse their
    compiled kernels); causal attention keeps the padding out of the scored positions."""
    inputs = np.zeros((1, model.block_size), "int32")
    inputs[0, : len(tokens) - 1] = tokens[:-1]
    logits = ops.convert_to_numpy(model(inputs))[0, : len(tokens) - 1]
    logp = log_softmax(logits)[-n:]
    targets = np.asarray(tokens[-n:])
    return float(logp[np.arange(n), targets].sum()), bool((logits[-n:].argmax(-1) == targets).all())
