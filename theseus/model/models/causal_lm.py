"""What every decoder-only language model shares.

`CausalLM` is any trainable model from token ids to float32 logits (`model.fit` works on
it). `DecoderLM` is the transformer every native family fills: token embedding, positions,
`DecoderBlock`s, final norm, head, and the key/value-cached forward pass generation runs.
A family (`gpt.py`, `llama.py`) says only what differs: its blocks, positions and norm.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from keras.src.backend import set_keras_mask

from theseus.base.targets import IGNORE_INDEX
from theseus.model.axes import TENSOR_PARALLEL, Axes
from theseus.model.chunked_loss import chunk_size, chunked_loss
from theseus.model.layers import CausalSelfAttention, Embedding, rotary_tables
from theseus.model.layers.attention import cache_attention_mask, cache_positions
from theseus.model.layers.dense import matmul
from theseus.model.module import Module, ShardingRules


@keras.saving.register_keras_serializable(package="theseus")
class CausalLMLoss(keras.losses.Loss):
    """Next-token cross-entropy on float32 logits, averaged over the targets that count.

    The same loss as `SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)`
    (tested equal), computed as `logsumexp(logits) - logits[target]`: Keras's version masks
    the full (B, T, vocab) logits and multiplies them by a one-hot of the targets, which
    cost a sixth of a training step at vocabulary 8192 on CPU (`benchmarks/README.md`).
    """

    def __init__(self, name: str = "causal_lm_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, "int32")
        valid = keras.ops.not_equal(y_true, IGNORE_INDEX)
        target = keras.ops.where(valid, y_true, 0)[..., None]
        picked = keras.ops.take_along_axis(y_pred, target, axis=-1)[..., 0]
        losses = keras.ops.where(valid, keras.ops.logsumexp(y_pred, axis=-1) - picked, 0.0)
        # Keras's own masked losses do this: the reduction then averages over valid targets only.
        set_keras_mask(losses, mask=valid)
        return losses


class CausalLM(Module, keras.Model):
    """A `Module` that is also a `keras.Model`: `model.fit` works on it directly.

    Inputs are token ids (B, T), outputs float32 logits (B, T, vocab); targets are the
    inputs shifted by one, with `IGNORE_INDEX` where no loss should be taken. Sharded by
    tensor parallelism (`theseus.model.axes.TENSOR_PARALLEL`) unless `sharding` says otherwise.
    """

    @property
    def sharding(self) -> ShardingRules:
        return list(TENSOR_PARALLEL)

    def compile(
        self, optimizer: Any = "adamw", loss: Any = "auto", loss_chunk: int | bool | str = "auto", **kwargs: Any
    ) -> None:
        """`keras.Model.compile` with the causal-LM loss as the default (`loss="auto"`).

        `loss_chunk` (`training/loss_chunk`, see `theseus.model.chunked_loss.chunk_size`) is for a
        model that can apply its head chunk by chunk (`DecoderLM`); any other keeps full logits.
        """
        chunk_size(loss_chunk, 0)  # a bad setting fails here, whatever the model
        super().compile(optimizer=optimizer, loss=CausalLMLoss() if loss == "auto" else loss, **kwargs)


def dropped(dropout: keras.layers.Dropout | None, x, training: bool):
    """`dropout(x)` where it drops anything: a layer call that returns its input still costs Keras's
    call machinery, about 0.4 ms each on torch's eager step (9 calls a step for a 4-layer GPT)."""
    return dropout(x, training=training) if training and dropout is not None and dropout.rate else x


class DecoderBlock(Module):
    """A pre-norm residual block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

    A family's block creates `ln_1`, `attn` (a `CausalSelfAttention`), `ln_2` and `mlp`;
    its constructor arguments, plain values, are its config.

    Args:
        dropout: residual dropout (0, the default, adds no op).
    """

    def __init__(self, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: tuple) -> None:
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, rotary=None, attention_mask=None, cache=None, cache_index=None, training=False):
        """The block on `x` (B, T, C); with a `cache`, also returns the updated cache
        (see `CausalSelfAttention.call` for the arguments)."""
        attended = self.attn(
            self.ln_1(x), rotary=rotary, cache=cache, cache_index=cache_index, attention_mask=attention_mask
        )
        if cache is not None:
            attended, cache = attended
        x = x + dropped(self.dropout, attended, training)
        x = x + dropped(self.dropout, self.mlp(self.ln_2(x)), training)
        return (x, cache) if cache is not None else x

    def get_config(self) -> dict[str, Any]:
        # Keras records a layer's constructor arguments when they are plain values (`Operation.__new__`).
        return {**self._auto_config.config, **super().get_config()}


class DecoderLM(CausalLM):
    """Token embedding -> `DecoderBlock`s -> final norm -> head, as float32 logits.

    A family declares the fields `vocab_size`, `block_size`, `n_embd` and `tie_embeddings`,
    and creates in its `__init__` (these names are the variable paths that checkpoints and
    the Hugging Face conversion read):

    - `wte`, the token `Embedding` (also the output head when `tie_embeddings`);
    - positions: `wpe`, a learned position `Embedding` added to the token embeddings, or
      `inv_freq`, the rotary frequencies (`rotary.inverse_frequencies`) attention applies;
    - `drop` (optional), dropout on the embeddings;
    - `blocks`, its `DecoderBlock`s, and `ln_f`, the final norm.

    An untied head is the weight `lm_head` (n_embd, vocab). A family that sets
    `sliding_window` limits attention to that many recent tokens.

    Compiled with the default loss and a `loss_chunk` (`compile`), a training call returns the
    final norm's output instead of logits, and `compute_loss` applies the head and the loss
    chunk by chunk (`theseus.model.chunked_loss`): the full logits never exist in training.

    Call it on token ids (B, T), optionally with `padding_mask` (B, T) true on real tokens,
    or on a dict `{"token_ids": ..., "padding_mask": ...}`.
    """

    sliding_window: int | None = None
    loss_chunk: int = 0
    """Tokens per chunk of the training loss (0: full logits), as `compile` resolved `loss_chunk`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Optional parts, None until a family sets them (on the instance: under torch, a
        # class attribute would hide the sublayer assigned later).
        self.wpe: Embedding | None = None
        self.inv_freq: np.ndarray | None = None
        self.drop: keras.layers.Dropout | None = None

    def build(self, input_shape: Any = (None, None)) -> None:
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        hidden_shape = (*input_shape[:2], self.n_embd)
        self.wte.build(input_shape)
        if self.wpe is not None:
            self.wpe.build(input_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.ln_f.build(hidden_shape)
        if not self.tie_embeddings:
            self.lm_head = self.add_weight(
                name="lm_head",
                shape=(self.n_embd, self.vocab_size),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                axes=(Axes.N_EMBD, Axes.VOCAB),
            )
        self.built = True

    def call(self, token_ids, padding_mask=None, training=False):
        """Logits for `token_ids` (B, T); `padding_mask` (B, T), true on real tokens, lets
        rows be padded (left or right): each row gets the logits it would get alone."""
        if isinstance(token_ids, dict):
            token_ids, padding_mask = token_ids["token_ids"], token_ids.get("padding_mask")
        length = ops.shape(token_ids)[1]
        positions, mask = ops.arange(length), None  # None: causal attention
        if padding_mask is None and self.sliding_window is not None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        if padding_mask is not None:
            positions = cache_positions(padding_mask)  # (B, T)
            mask = cache_attention_mask(padding_mask, 0, length, self.sliding_window)  # (B, T, T)
        x, rotary = self.embed(token_ids, positions, training)
        for block in self.blocks:
            x = block(x, rotary=rotary, attention_mask=mask, training=training)
        if training and self.loss_chunk:
            return self.ln_f(x)  # `compute_loss` applies the head, chunk by chunk
        return self.logits(x)

    def embed(self, token_ids, positions, training=False):
        """The embeddings (B, T, C) of `token_ids` at `positions` ((T,) or (B, T)), and the
        rotary `(cos, sin)` tables the blocks apply (None with learned positions)."""
        x = self.wte(token_ids)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = dropped(self.drop, x, training)
        rotary = rotary_tables(positions, self.inv_freq) if self.inv_freq is not None else None
        return x, rotary

    def logits(self, x):
        """Final norm and head on the last block's output: float32 (B, T, vocab), as the loss wants."""
        return self.head(self.ln_f(x), self.head_weight)

    @property
    def head_weight(self) -> keras.Variable:
        """The head's weight: the token embedding (vocab, C) when tied, else `lm_head` (C, vocab)."""
        return self.wte.embeddings if self.tie_embeddings else self.lm_head

    def head(self, x, weight):
        """Float32 logits (..., vocab) of the final norm's output `x` (..., C) by the head `weight`
        (`head_weight`, or its value): a family that scales or caps its logits changes this one
        method, and the chunked loss (`compute_loss`) follows."""
        weight = ops.cast(weight, x.dtype)
        logits = matmul(x, ops.transpose(weight)) if self.tie_embeddings else matmul(x, weight)
        return ops.cast(logits, "float32")

    def compile(
        self, optimizer: Any = "adamw", loss: Any = "auto", loss_chunk: int | bool | str = "auto", **kwargs: Any
    ) -> None:
        self.loss_chunk = chunk_size(loss_chunk, self.vocab_size) if loss == "auto" else 0
        super().compile(optimizer=optimizer, loss=loss, loss_chunk=loss_chunk, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras's loss hook: in a chunked training step `y_pred` is the final norm's output, and the
        head and the loss go chunk by chunk; otherwise the compiled loss on the logits."""
        if not (training and self.loss_chunk):
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        weight = self.head_weight
        loss = chunked_loss(self.head, y_pred, weight.value, y, sample_weight, self.loss_chunk, weight.trainable)
        return ops.sum([loss, *(self._aggregate_additional_loss(extra) for extra in self.losses)])

    def init_cache(self, batch_size: int, max_length: int) -> list:
        """An empty key/value cache: per block, `(keys, values)` each (B, S, n_kv_head, head_dim)."""
        return [self._empty_cache(block.attn, batch_size, max_length) for block in self.blocks]

    def _empty_cache(self, attn: CausalSelfAttention, batch_size: int, max_length: int) -> tuple:
        shape = (batch_size, max_length, attn.n_kv_head, attn.head_dim)
        return ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype)

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask):
        """Run `token_ids` (B, T) as cache slots `cache_index ...` (what generation calls).

        Args:
            cache: from `init_cache`, holding the keys/values of earlier slots.
            cache_index: the slot of the first of the T tokens (an int or scalar tensor).
            padding_mask: (B, S) True on the slots that hold (or will hold) real tokens;
                rows may be left-padded: positions count a row's real tokens only.

        Returns:
            float32 logits (B, T, vocab) and the updated cache.
        """
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        positions = ops.slice(cache_positions(padding_mask), [0, cache_index], [batch, length])  # (B, T)
        mask = cache_attention_mask(padding_mask, cache_index, length, self.sliding_window)  # (B, T, S)
        x, rotary = self.embed(token_ids, positions)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, rotary=rotary, attention_mask=mask, cache=layer_cache, cache_index=cache_index)
            new_cache.append(layer_cache)
        return self.logits(x), new_cache

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        return (*input_shape, self.vocab_size)


class ModuleLM(CausalLM):
    """A trainable model around a plain `Module` that maps token ids to logits.

    Lets a user subclass `Module` directly (as the tutorial shows) and still train it
    with `model.fit`; its sharding rules and weights' logical axes carry over.
    """

    def __init__(self, module: Module, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", f"{module.name}_lm"), **kwargs)
        self.module = module

    @property
    def sharding(self) -> ShardingRules:
        return self.module.sharding

    def build(self, input_shape: tuple) -> None:
        self.module.build(input_shape)
        self.built = True

    def call(self, token_ids, training=False):
        return keras.ops.cast(self.module(token_ids, training=training), "float32")


def as_causal_lm(module: Module) -> CausalLM:
    """`module` itself when it is already a model, else wrapped in a `ModuleLM`."""
    return module if isinstance(module, keras.Model) else ModuleLM(module)
