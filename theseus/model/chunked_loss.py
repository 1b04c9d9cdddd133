"""A causal LM's cross-entropy that never holds its full logits: the head, chunk by chunk.

At a real vocabulary the float32 logits dominate a training step: Qwen2.5's 151,936 entries
make 2.5 GB of logits for a batch of 4 x 1024 tokens, and as much again for their gradient.
`chunked_loss` takes the last hidden states instead and, for a chunk of positions at a time,
applies the head (`head(hidden, weight)`, the model's own: tied or untied, with whatever
scaling a family adds), then `logsumexp(logits) - logits[target]`, and at once the chunk's
gradient (`softmax - one_hot`, pulled back through the head): only one chunk of logits exists
at any time, forward or backward, and no matmul is done twice (so a step costs no more than
with full logits). It is the loss `CausalLMLoss` computes, averaged over the targets that are
not `IGNORE_INDEX` (tested equal, with its gradients, within 1e-5).

On JAX (a `jax.custom_vjp` around a `lax.scan`) and PyTorch (a `torch.autograd.Function` around
a loop); on TensorFlow `chunk_size` says 0 and models keep the full logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from theseus.base.targets import IGNORE_INDEX

AUTO_VOCABULARY = 32768
"""`auto` chunks the loss above this vocabulary. At 32k entries (Llama 2, Mistral) and below, a step's
float32 logits are about the size of one layer's activations and the one fused full-logit loss is the
quickest; the 49k-152k vocabularies of SmolLM2, Llama 3 and Qwen2.5 are where logits dominate memory."""

CHUNK_BYTES = 2**29
"""`auto` sizes a chunk so that its float32 logits take at most 512 MiB (at least `MIN_CHUNK` tokens):
each chunk adds a full-size gradient of the head into an accumulator, so fewer, larger chunks move fewer
bytes (at Qwen2.5's vocabulary, 128-token chunks made the head and loss 1.19x slower than full logits,
on a loaded CPU); 512 MiB (and its gradient) stays under 3% of that model's step at batch 4 x 1024."""

MIN_CHUNK = 128

BACKENDS = ("jax", "torch")
"""Backends where the chunked loss has its own gradient; TensorFlow keeps the full logits."""


def chunk_size(setting: int | bool | str, vocab_size: int) -> int:
    """Tokens per chunk for the `training/loss_chunk` setting at `vocab_size`; 0 = full logits.

    `"auto"`: chunked above `AUTO_VOCABULARY`, in chunks of `CHUNK_BYTES` of logits; `True`: the
    same chunks at any vocabulary; a positive integer: chunks of that many tokens; `0` or `False`:
    off. Off on backends other than `BACKENDS`.
    """
    if isinstance(setting, bool) or setting == "auto":
        on = setting is True or (setting == "auto" and vocab_size > AUTO_VOCABULARY)
        tokens = 2 ** max(0, (CHUNK_BYTES // (4 * max(vocab_size, 1))).bit_length() - 1)  # a power of two
        chunk = max(MIN_CHUNK, tokens) if on else 0
    elif isinstance(setting, int) and setting >= 0:
        chunk = setting
    else:
        raise ValueError(
            f"Argument `loss_chunk` must be 'auto', a bool or a number of tokens >= 0. Received: loss_chunk={setting!r}"
        )
    return chunk if keras.backend.backend() in BACKENDS else 0


def chunked_loss(
    head: Callable[[Any, Any], Any],
    hidden: Any,
    weight: Any,
    targets: Any,
    sample_weight: Any = None,
    chunk: int = 1024,
    weight_grad: bool = True,
) -> Any:
    """The mean next-token cross-entropy of `head(hidden, weight)`'s logits over the counted targets.

    Args:
        head: `(hidden chunk (B, t, C), weight) -> float32 logits (B, t, vocab)`.
        hidden: the final norm's output (B, T, C).
        weight: the head's weight, as `head` takes it.
        targets: (B, T) token ids, `IGNORE_INDEX` where no loss is taken.
        sample_weight: (B, T) or (B,) weights of the targets (as Keras's losses take them), or None.
        chunk: tokens per chunk: each chunk holds `max(1, chunk // B)` positions of every row
            (rows stay whole, so a batch-sharded `hidden` stays sharded).
        weight_grad: whether `weight` trains (a frozen head's gradient is not computed).

    Returns:
        The scalar loss (0 when no target counts).
    """
    targets = ops.cast(targets, "int32")
    counted = ops.not_equal(targets, IGNORE_INDEX)
    scale = ops.cast(counted, "float32")
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        scale = scale * (sample_weight if len(sample_weight.shape) == 2 else sample_weight[:, None])
    total = _chunked_sum(head, hidden, weight, ops.where(counted, targets, 0), scale, chunk, weight_grad)
    return total / ops.maximum(ops.sum(ops.cast(counted, "float32")), 1.0)


def _chunked_sum(head, hidden, weight, targets, scale, chunk: int, weight_grad: bool):
    """`sum(scale * (logsumexp(logits) - logits[target]))` over every position, chunk by chunk."""
    batch, length = hidden.shape[0], hidden.shape[1]
    positions = max(1, min(chunk // batch, length))  # per row and chunk
    if keras.backend.backend() == "torch":
        return _torch_chunked_sum().apply(hidden, weight, targets, scale, head, positions, weight_grad)
    return _jax_chunked_sum(head, hidden, weight, targets, scale, positions, weight_grad)


def _chunk_loss(logits, target, scale):
    """A chunk's summed loss and its gradient in the logits, `scale * (softmax - one_hot(target))`."""
    top = ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    shifted = logits - top
    exps = ops.exp(shifted)
    sums = ops.sum(exps, axis=-1)
    picked = ops.take_along_axis(shifted, target[..., None], axis=-1)[..., 0]
    gradient = exps / sums[..., None] - ops.one_hot(target, ops.shape(logits)[-1], dtype=logits.dtype)
    return ops.sum(scale * (ops.log(sums) - picked)), gradient * scale[..., None]


def _jax_chunked_sum(head, hidden, weight, targets, scale, positions: int, weight_grad: bool):
    import jax
    import jax.numpy as jnp

    batch, length, width = hidden.shape
    parts = -(-length // positions)
    padding = parts * positions - length  # padded positions have scale 0: they add nothing

    def chunks(x):  # (B, T, ...) -> (parts, B, positions, ...)
        x = jnp.pad(x, [(0, 0), (0, padding)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, parts, positions, *x.shape[2:]), 1, 0)

    @jax.custom_vjp
    def summed(hidden, weight, targets, scale):
        def step(total, xs):
            h, t, s = xs
            return total + _chunk_loss(head(h, weight), t, s)[0], None

        return jax.lax.scan(step, jnp.zeros((), "float32"), (chunks(hidden), chunks(targets), chunks(scale)))[0]

    def forward(hidden, weight, targets, scale):
        def step(carry, xs):
            total, weight_gradient = carry
            h, t, s = xs
            logits, pullback = jax.vjp(head, h, weight)
            loss, d_logits = _chunk_loss(logits, t, s)
            d_hidden, d_weight = pullback(d_logits)
            if weight_grad:
                weight_gradient = weight_gradient + d_weight.astype("float32")
            return (total + loss, weight_gradient), d_hidden

        start = (jnp.zeros((), "float32"), jnp.zeros(weight.shape if weight_grad else (), "float32"))
        (total, d_weight), d_hidden = jax.lax.scan(step, start, (chunks(hidden), chunks(targets), chunks(scale)))
        d_hidden = jnp.moveaxis(d_hidden, 0, 1).reshape(batch, parts * positions, width)[:, :length]
        return total, (d_hidden, d_weight.astype(weight.dtype) if weight_grad else None)

    def backward(residuals, g):
        d_hidden, d_weight = residuals
        d_weight = (g * d_weight).astype(d_weight.dtype) if weight_grad else None
        return (g * d_hidden).astype(d_hidden.dtype), d_weight, None, None

    summed.defvjp(forward, backward)
    return summed(hidden, weight, targets, scale)


@functools.cache
def _torch_chunked_sum() -> type:
    """The chunked sum as a `torch.autograd.Function` (made on first use: torch loads only on torch)."""
    import torch

    class ChunkedSum(torch.autograd.Function):
        """The forward takes each chunk's gradient as it goes (the head's own backward, through
        `torch.autograd.grad`) and keeps only the hidden states' gradient and the head's sum."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, scale, head, positions, weight_grad):
            total = hidden.new_zeros((), dtype=torch.float32)
            d_hidden = torch.empty_like(hidden)
            d_weight = weight.new_zeros(weight.shape, dtype=torch.float32) if weight_grad else None
            frozen = weight.detach().requires_grad_(weight_grad)
            for start in range(0, hidden.shape[1], positions):
                part = slice(start, start + positions)
                with torch.enable_grad():
                    h = hidden[:, part].detach().requires_grad_()
                    logits = head(h, frozen)
                loss, d_logits = _chunk_loss(logits.detach(), targets[:, part], scale[:, part])
                grads = torch.autograd.grad(logits, (h, frozen) if weight_grad else (h,), d_logits)
                total += loss
                d_hidden[:, part] = grads[0]
                if weight_grad:
                    d_weight += grads[1]
            ctx.save_for_backward(d_hidden, d_weight.to(weight.dtype) if weight_grad else None)
            return total

        @staticmethod
        def backward(ctx, g):
            d_hidden, d_weight = ctx.saved_tensors
            return g * d_hidden, None if d_weight is None else g * d_weight, None, None, None, None, None

    return ChunkedSum
