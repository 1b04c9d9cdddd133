"""Llama: pre-RMSNorm blocks with grouped-query attention, rotary positions and a SwiGLU MLP.

The same module is Mistral (a sliding attention window), Qwen2 (biases on q/k/v) and
Qwen3 (RMS-normalised query and key heads): each is a setting of its fields, so one set
of layers, one set of logical axes and one set of sharding rules serves the four.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import keras
from keras import ops

from theseus.base.axis import Axis
from theseus.config import field
from theseus.model.axes import Axes
from theseus.model.layers import CausalSelfAttention, Embedding, GatedMLP, RMSNorm, rotary_tables
from theseus.model.layers.attention import cache_attention_mask, cache_positions
from theseus.model.layers.dense import matmul
from theseus.model.layers.rotary import inverse_frequencies
from theseus.model.models.causal_lm import CausalLM
from theseus.model.module import Module


class LlamaBlock(Module):
    """`x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`."""

    def __init__(
        self,
        n_head: int,
        n_kv_head: int,
        head_dim: int,
        n_embd_ff: int,
        norm_eps: float = 1e-6,
        qkv_bias: bool = False,
        out_bias: bool = False,
        mlp_bias: bool = False,
        qk_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = dict(
            n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, n_embd_ff=n_embd_ff, norm_eps=norm_eps,
            qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias, qk_norm=qk_norm,
        )
        self.ln_1 = RMSNorm(norm_eps, name="ln_1")
        self.attn = CausalSelfAttention(
            n_head, head_dim, n_kv_head, qkv_bias=qkv_bias, out_bias=out_bias,
            qk_norm=qk_norm, qk_norm_eps=norm_eps, name="attn",
        )
        self.ln_2 = RMSNorm(norm_eps, name="ln_2")
        self.n_embd_ff, self.mlp_bias = n_embd_ff, mlp_bias

    def build(self, input_shape: tuple) -> None:
        self.mlp = GatedMLP(input_shape[-1], self.n_embd_ff, use_bias=self.mlp_bias, name="mlp")
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, rotary=None, attention_mask=None, cache=None, cache_index=None):
        """The block on `x` (B, T, C); with a `cache`, also returns the updated cache."""
        attended = self.attn(self.ln_1(x), rotary=rotary, cache=cache, cache_index=cache_index, attention_mask=attention_mask)
        if cache is not None:
            attended, cache = attended
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return (x, cache) if cache is not None else x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.config}


class Llama(CausalLM):
    """Decoder-only Llama-family language model; every size is an `architecture/...` field.

    Call it on token ids (B, T), optionally with `padding_mask` (B, T) true on real tokens,
    or on a dict `{"token_ids": ..., "padding_mask": ...}`; it returns float32 logits.

    Example:
        >>> model = Llama(vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
        >>> logits = model(token_ids)  # (B, T, 320)
    """

    vocab_size: int = field("architecture/vocab_size", default=320, help="rows of the embedding")
    block_size: int = field("architecture/block_size", default=256, help="context length in tokens (HF max_position_embeddings)")
    n_layer: int = field("architecture/n_layer", default=4, help="transformer blocks")
    n_head: int = field("architecture/n_head", default=4, help="query heads")
    n_kv_head: Optional[int] = field("architecture/n_kv_head", default=None, help="key/value heads (grouped-query); null = n_head")
    n_embd: int = field("architecture/n_embd", default=128, help="residual width")
    n_embd_ff: Optional[int] = field("architecture/n_embd_ff", default=None, help="MLP width; null = 8/3 * n_embd rounded up to 64")
    head_dim: Optional[int] = field("architecture/head_dim", default=None, help="width of one head; null = n_embd // n_head")
    rope_theta: float = field("architecture/rope_theta", default=10000.0, help="RoPE base")
    rope_scaling: Optional[dict] = field("architecture/rope_scaling", default=None, help="RoPE frequency scaling, e.g. {rope_type: llama3, factor: 8, ...}")
    norm_eps: float = field("architecture/norm_eps", default=1e-6, help="RMSNorm epsilon")
    tie_embeddings: bool = field("architecture/tie_embeddings", default=False, help="output head = embedding transposed")
    qkv_bias: bool = field("architecture/qkv_bias", default=False, help="biases on the q/k/v projections (Qwen2)")
    out_bias: bool = field("architecture/out_bias", default=False, help="bias on the attention output projection")
    mlp_bias: bool = field("architecture/mlp_bias", default=False, help="biases on the MLP projections")
    qk_norm: bool = field("architecture/qk_norm", default=False, help="RMS-normalise query and key heads (Qwen3)")
    sliding_window: Optional[int] = field("architecture/sliding_window", default=None, help="attend to at most this many recent tokens (Mistral); null = all")

    def __init__(self, name: str = "llama", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or set head_dim")
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.n_kv_head = self.n_kv_head or self.n_head
        self.n_embd_ff = self.n_embd_ff or 64 * math.ceil(8 * self.n_embd / 3 / 64)
        self._field_values.update({"head_dim": self.head_dim, "n_kv_head": self.n_kv_head, "n_embd_ff": self.n_embd_ff})
        self.inv_freq = inverse_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)
        self.wte = Embedding(
            self.vocab_size, self.n_embd, initializer=keras.initializers.RandomNormal(stddev=0.02), name="wte"
        )
        self.blocks = [
            LlamaBlock(
                self.n_head, self.n_kv_head, self.head_dim, self.n_embd_ff, self.norm_eps,
                self.qkv_bias, self.out_bias, self.mlp_bias, self.qk_norm, name=f"block_{i}",
            )
            for i in range(self.n_layer)
        ]
        self.ln_f = RMSNorm(self.norm_eps, name="ln_f")

    @property
    def sharding(self) -> list[tuple[str, Optional[Any]]]:
        """Megatron-style tensor parallelism: heads and MLP hidden split over `shard`."""
        return [
            (Axes.VOCAB.value, None),
            (Axes.N_EMBD.value, None),
            (Axes.N_EMBD_FF.value, Axis.SHARD),
            (Axes.N_EMBD_OUT.value, Axis.SHARD),
            (Axes.N_ATTN.value, Axis.SHARD),
            (Axes.N_KV.value, Axis.SHARD),
        ]

    def build(self, input_shape: Any = (None, None)) -> None:
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        hidden_shape = (*input_shape[:2], self.n_embd)
        self.wte.build(input_shape)
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
        positions, mask = ops.arange(length), None
        if padding_mask is None and self.sliding_window is not None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        if padding_mask is not None:
            positions = cache_positions(padding_mask)  # (B, T)
            mask = cache_attention_mask(padding_mask, 0, length, self.sliding_window)  # (B, T, T)
        rotary = rotary_tables(positions, self.inv_freq)  # (T, hd) or (B, T, hd) each
        x = self.wte(token_ids)  # (B, T, C)
        for block in self.blocks:
            x = block(x, rotary=rotary, attention_mask=mask)
        return self._logits(x)

    def _logits(self, x):
        x = self.ln_f(x)
        logits = self.wte.attend(x) if self.tie_embeddings else matmul(x, self.lm_head)
        return ops.cast(logits, "float32")  # (B, T, vocab): the loss wants float32

    def init_cache(self, batch_size: int, max_length: int):
        """An empty key/value cache: per block, `(keys, values)` each (B, S, n_kv_head, hd)."""
        shape = (batch_size, max_length, self.n_kv_head, self.head_dim)
        return [(ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype)) for _ in self.blocks]

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask):
        """Run `token_ids` (B, T) as cache slots `cache_index ...` (what generation calls);
        `padding_mask` (B, S) is true on the slots of real tokens. Returns float32 logits
        (B, T, vocab) and the updated cache."""
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        positions = ops.slice(cache_positions(padding_mask), [0, cache_index], [batch, length])  # (B, T)
        mask = cache_attention_mask(padding_mask, cache_index, length, self.sliding_window)  # (B, T, S)
        rotary = rotary_tables(positions, self.inv_freq)  # (B, T, hd) each
        x = self.wte(token_ids)  # (B, T, C)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, rotary=rotary, attention_mask=mask, cache=layer_cache, cache_index=cache_index)
            new_cache.append(layer_cache)
        return self._logits(x), new_cache

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        return (*input_shape, self.vocab_size)
