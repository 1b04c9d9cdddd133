"""GPT: a decoder-only transformer with pre-LayerNorm blocks (GPT-2 by default).

With its defaults (learned positions, tanh-GELU, biases, tied embeddings) it is exactly
GPT-2's architecture; `position="rope"` gives rotary positions instead. Reads top to
bottom: the block, then the model.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import keras
from keras import ops

from theseus.base.axis import Axis
from theseus.config import field
from theseus.model.axes import Axes
from theseus.model.layers import MLP, CausalSelfAttention, Embedding, LayerNorm, rotary_tables
from theseus.model.layers.attention import cache_attention_mask, cache_positions
from theseus.model.layers.dense import matmul
from theseus.model.layers.rotary import inverse_frequencies
from theseus.model.models.causal_lm import CausalLM
from theseus.model.module import Module


class Block(Module):
    """`x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`, with residual dropout."""

    def __init__(
        self,
        n_head: int,
        n_embd: int,
        n_embd_ff: int,
        n_layer: int,
        dropout: float = 0.0,
        bias: bool = True,
        activation: str = "gelu_tanh",
        norm_eps: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = dict(
            n_head=n_head, n_embd=n_embd, n_embd_ff=n_embd_ff, n_layer=n_layer,
            dropout=dropout, bias=bias, activation=activation, norm_eps=norm_eps,
        )
        out_std = 0.02 / math.sqrt(2 * n_layer)  # GPT-2: residual projections scaled by depth
        self.ln_1 = LayerNorm(norm_eps, bias, name="ln_1")
        self.attn = CausalSelfAttention(
            n_head, n_embd // n_head, qkv_bias=bias, out_bias=bias, out_init_std=out_std, name="attn"
        )
        self.ln_2 = LayerNorm(norm_eps, bias, name="ln_2")
        self.mlp = MLP(n_embd, n_embd_ff, activation, bias, out_init_std=out_std, name="mlp")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: tuple) -> None:
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, rotary=None, training=False, cache=None, cache_index=None, attention_mask=None):
        """The block on `x` (B, T, C); with a `cache`, also returns the updated cache."""
        attended = self.attn(self.ln_1(x), rotary=rotary, cache=cache, cache_index=cache_index, attention_mask=attention_mask)
        if cache is not None:
            attended, cache = attended
        x = x + self.dropout(attended, training=training)
        x = x + self.dropout(self.mlp(self.ln_2(x)), training=training)
        return (x, cache) if cache is not None else x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.config}


class GPT(CausalLM):
    """Decoder-only GPT language model; every size is an `architecture/...` config field.

    Example:
        >>> model = GPT(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=64)
        >>> model.compile(optimizer=keras.optimizers.AdamW(learning_rate=WSD(1e-3, 100)))
        >>> model.fit(x=tokens[:, :-1], y=tokens[:, 1:])
    """

    vocab_size: int = field("architecture/vocab_size", default=320, help="rows of the embedding (256 bytes + specials, padded to 64)")
    block_size: int = field("architecture/block_size", default=256, help="context length in tokens")
    n_layer: int = field("architecture/n_layer", default=4, help="transformer blocks")
    n_head: int = field("architecture/n_head", default=4, help="attention heads")
    n_embd: int = field("architecture/n_embd", default=128, help="residual width")
    n_embd_ff: Optional[int] = field("architecture/n_embd_ff", default=None, help="MLP width; null = 4 * n_embd")
    dropout: float = field("architecture/dropout", default=0.0, help="residual and embedding dropout")
    bias: bool = field("architecture/bias", default=True, help="biases in projections and LayerNorms")
    tie_embeddings: bool = field("architecture/tie_embeddings", default=True, help="output head = embedding transposed")
    position: Literal["learned", "rope"] = field("architecture/position", default="learned", help="learned or rope")
    rope_theta: float = field("architecture/rope_theta", default=10000.0, help="RoPE base (position: rope)")
    activation: str = field("architecture/activation", default="gelu_tanh", help="gelu, gelu_tanh, relu or silu")
    norm_eps: float = field("architecture/norm_eps", default=1e-5, help="LayerNorm epsilon")

    def __init__(self, name: str = "gpt", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        hidden = self.n_embd_ff or 4 * self.n_embd
        self.wte = Embedding(
            self.vocab_size, self.n_embd, initializer=keras.initializers.RandomNormal(stddev=0.02), name="wte"
        )
        if self.position == "learned":
            self.wpe = Embedding(
                self.block_size,
                self.n_embd,
                axes=(Axes.BLOCK_SIZE, Axes.N_EMBD),
                initializer=keras.initializers.RandomNormal(stddev=0.01),
                name="wpe",
            )
        else:
            self.inv_freq = inverse_frequencies(self.n_embd // self.n_head, self.rope_theta)
        self.drop = keras.layers.Dropout(self.dropout)
        self.blocks = [
            Block(self.n_head, self.n_embd, hidden, self.n_layer, self.dropout, self.bias,
                  self.activation, self.norm_eps, name=f"block_{i}")
            for i in range(self.n_layer)
        ]
        self.ln_f = LayerNorm(self.norm_eps, self.bias, name="ln_f")

    @property
    def sharding(self) -> list[tuple[str, Optional[Any]]]:
        """Megatron-style tensor parallelism: heads and MLP hidden split over `shard`."""
        return [
            (Axes.VOCAB.value, None),
            (Axes.BLOCK_SIZE.value, None),
            (Axes.N_EMBD.value, None),
            (Axes.N_EMBD_FF.value, Axis.SHARD),
            (Axes.N_EMBD_OUT.value, Axis.SHARD),
            (Axes.N_ATTN.value, Axis.SHARD),
            (Axes.N_KV.value, Axis.SHARD),
        ]

    def build(self, input_shape: tuple = (None, None)) -> None:
        hidden_shape = (*input_shape[:2], self.n_embd)
        self.wte.build(input_shape)
        if self.position == "learned":
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
        length = ops.shape(token_ids)[1]
        positions, mask = ops.arange(length), None
        if padding_mask is not None:
            positions = cache_positions(padding_mask)  # (B, T)
            mask = cache_attention_mask(padding_mask, 0, length)  # (B, T, T)
        x = self.wte(token_ids)  # (B, T, C)
        rotary = None
        if self.position == "learned":
            x = x + self.wpe(positions)
        else:
            rotary = rotary_tables(positions, self.inv_freq)  # (T, hd) or (B, T, hd) each
        x = self.drop(x, training=training)
        for block in self.blocks:
            x = block(x, rotary=rotary, training=training, attention_mask=mask)
        return self._logits(x)

    def _logits(self, x):
        x = self.ln_f(x)
        logits = self.wte.attend(x) if self.tie_embeddings else matmul(x, self.lm_head)
        return ops.cast(logits, "float32")  # (B, T, vocab): the loss wants float32

    def init_cache(self, batch_size: int, max_length: int):
        """An empty key/value cache: per block, `(keys, values)` each (B, S, n_head, hd)."""
        shape = (batch_size, max_length, self.n_head, self.n_embd // self.n_head)
        return [(ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype)) for _ in self.blocks]

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
        attention_mask = cache_attention_mask(padding_mask, cache_index, length)  # (B, T, S)
        x = self.wte(token_ids)  # (B, T, C)
        rotary = None
        if self.position == "learned":
            x = x + self.wpe(positions)
        else:
            rotary = rotary_tables(positions, self.inv_freq)  # (B, T, hd) each
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(
                x, rotary=rotary, cache=layer_cache, cache_index=cache_index, attention_mask=attention_mask
            )
            new_cache.append(layer_cache)
        return self._logits(x), new_cache

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.vocab_size)
