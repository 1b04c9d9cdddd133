"""Llama: pre-RMSNorm blocks with grouped-query attention, rotary positions and a SwiGLU MLP.

The same module is Mistral (a sliding attention window), Qwen2 (biases on q/k/v) and
Qwen3 (RMS-normalised query and key heads): each is a setting of its fields, so one set
of layers, one set of logical axes and one set of sharding rules serves the four.
Reads top to bottom: the block, then the model; the forward pass is `DecoderLM`'s.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from theseus.config import field
from theseus.model.layers import CausalSelfAttention, Embedding, GatedMLP, RMSNorm
from theseus.model.layers.rotary import inverse_frequencies
from theseus.model.models.causal_lm import DecoderBlock, DecoderLM


class LlamaBlock(DecoderBlock):
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
        self.n_embd_ff, self.mlp_bias = n_embd_ff, mlp_bias
        self.ln_1 = RMSNorm(norm_eps, name="ln_1")
        self.attn = CausalSelfAttention(
            n_head,
            head_dim,
            n_kv_head,
            qkv_bias=qkv_bias,
            out_bias=out_bias,
            qk_norm=qk_norm,
            qk_norm_eps=norm_eps,
            name="attn",
        )
        self.ln_2 = RMSNorm(norm_eps, name="ln_2")

    def build(self, input_shape: tuple) -> None:
        # The MLP's output width is the input's, known only now.
        self.mlp = GatedMLP(input_shape[-1], self.n_embd_ff, use_bias=self.mlp_bias, name="mlp")
        super().build(input_shape)


class Llama(DecoderLM):
    """Decoder-only Llama-family language model; every size is an `architecture/...` field.

    Call it on token ids (B, T), optionally with `padding_mask` (B, T) true on real tokens,
    or on a dict `{"token_ids": ..., "padding_mask": ...}`; it returns float32 logits.

    Example:
        >>> model = Llama(vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
        >>> logits = model(token_ids)  # (B, T, 320)
    """

    # Every family lists all its fields, with its own defaults and help: its YAML reads from here.
    vocab_size: int = field("architecture/vocab_size", default=320, bounds=">= 1", help="rows of the embedding")
    block_size: int = field(
        "architecture/block_size",
        default=256,
        bounds=">= 1",
        help="context length in tokens (HF max_position_embeddings)",
    )
    n_layer: int = field("architecture/n_layer", default=4, bounds=">= 1", help="transformer blocks")
    n_head: int = field("architecture/n_head", default=4, bounds=">= 1", help="query heads")
    n_kv_head: int | None = field(
        "architecture/n_kv_head", default=None, bounds=">= 1", help="key/value heads (grouped-query); null = n_head"
    )
    n_embd: int = field("architecture/n_embd", default=128, bounds=">= 1", help="residual width")
    n_embd_ff: int | None = field(
        "architecture/n_embd_ff", default=None, bounds=">= 1", help="MLP width; null = 8/3 * n_embd rounded up to 64"
    )
    head_dim: int | None = field(
        "architecture/head_dim", default=None, bounds=">= 1", help="width of one head; null = n_embd // n_head"
    )
    rope_theta: float = field("architecture/rope_theta", default=10000.0, bounds="> 0", help="RoPE base")
    rope_scaling: dict | None = field(
        "architecture/rope_scaling",
        default=None,
        help="RoPE frequency scaling, e.g. {rope_type: llama3, factor: 8, ...}",
    )
    norm_eps: float = field("architecture/norm_eps", default=1e-6, bounds="> 0", help="RMSNorm epsilon")
    tie_embeddings: bool = field(
        "architecture/tie_embeddings", default=False, help="output head = embedding transposed"
    )
    qkv_bias: bool = field("architecture/qkv_bias", default=False, help="biases on the q/k/v projections (Qwen2)")
    out_bias: bool = field("architecture/out_bias", default=False, help="bias on the attention output projection")
    mlp_bias: bool = field("architecture/mlp_bias", default=False, help="biases on the MLP projections")
    qk_norm: bool = field("architecture/qk_norm", default=False, help="RMS-normalise query and key heads (Qwen3)")
    sliding_window: int | None = field(
        "architecture/sliding_window",
        default=None,
        bounds=">= 1",
        help="attend to at most this many recent tokens (Mistral); null = all",
    )

    block_class: type[LlamaBlock] = LlamaBlock

    def __init__(self, name: str = "llama", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: change one, or set head_dim"
            )
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.n_kv_head = self.n_kv_head or self.n_head
        self.n_embd_ff = self.n_embd_ff or 64 * math.ceil(8 * self.n_embd / 3 / 64)
        self._field_values.update({"head_dim": self.head_dim, "n_kv_head": self.n_kv_head, "n_embd_ff": self.n_embd_ff})
        self.inv_freq = inverse_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)
        self.wte = Embedding(
            self.vocab_size, self.n_embd, initializer=keras.initializers.RandomNormal(stddev=0.02), name="wte"
        )
        self.blocks = [self.make_block(i) for i in range(self.n_layer)]
        self.ln_f = RMSNorm(self.norm_eps, name="ln_f")

    def make_block(self, index: int, **kwargs: Any) -> LlamaBlock:
        """Block `index`, a `block_class`; a variant (`moe.py`) passes its own `kwargs`."""
        return self.block_class(
            self.n_head,
            self.n_kv_head,
            self.head_dim,
            self.n_embd_ff,
            self.norm_eps,
            self.qkv_bias,
            self.out_bias,
            self.mlp_bias,
            self.qk_norm,
            name=f"block_{index}",
            **kwargs,
        )
