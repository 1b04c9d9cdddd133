"""GPT: a decoder-only transformer with pre-LayerNorm blocks (GPT-2 by default).

With its defaults (learned positions, tanh-GELU, biases, tied embeddings) it is exactly
GPT-2's architecture; `position="rope"` gives rotary positions instead. Reads top to
bottom: the block, then the model; the forward pass is `DecoderLM`'s.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import keras

from theseus.config import field
from theseus.model.axes import Axes
from theseus.model.layers import MLP, CausalSelfAttention, Embedding, LayerNorm
from theseus.model.layers.rotary import inverse_frequencies
from theseus.model.models.causal_lm import DecoderBlock, DecoderLM


class Block(DecoderBlock):
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
        super().__init__(dropout, **kwargs)
        out_std = 0.02 / math.sqrt(2 * n_layer)  # GPT-2: residual projections scaled by depth
        self.ln_1 = LayerNorm(norm_eps, bias, name="ln_1")
        self.attn = CausalSelfAttention(
            n_head, n_embd // n_head, qkv_bias=bias, out_bias=bias, out_init_std=out_std, name="attn"
        )
        self.ln_2 = LayerNorm(norm_eps, bias, name="ln_2")
        self.mlp = MLP(n_embd, n_embd_ff, activation, bias, out_init_std=out_std, name="mlp")


class GPT(DecoderLM):
    """Decoder-only GPT language model; every size is an `architecture/...` config field.

    Example:
        >>> model = GPT(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=64)
        >>> model.compile(optimizer=keras.optimizers.AdamW(learning_rate=WSD(1e-3, 100)))
        >>> model.fit(x=tokens[:, :-1], y=tokens[:, 1:])
    """

    # Every family lists all its fields, with its own defaults and help: its YAML reads from here.
    vocab_size: int = field(
        "architecture/vocab_size",
        default=320,
        bounds=">= 1",
        help="rows of the embedding (256 bytes + specials, padded to 64)",
    )
    block_size: int = field("architecture/block_size", default=256, bounds=">= 1", help="context length in tokens")
    n_layer: int = field("architecture/n_layer", default=4, bounds=">= 1", help="transformer blocks")
    n_head: int = field("architecture/n_head", default=4, bounds=">= 1", help="attention heads")
    n_embd: int = field("architecture/n_embd", default=128, bounds=">= 1", help="residual width")
    n_embd_ff: int | None = field(
        "architecture/n_embd_ff", default=None, bounds=">= 1", help="MLP width; null = 4 * n_embd"
    )
    dropout: float = field("architecture/dropout", default=0.0, bounds="[0, 1)", help="residual and embedding dropout")
    bias: bool = field("architecture/bias", default=True, help="biases in projections and LayerNorms")
    tie_embeddings: bool = field("architecture/tie_embeddings", default=True, help="output head = embedding transposed")
    position: Literal["learned", "rope"] = field("architecture/position", default="learned", help="learned or rope")
    rope_theta: float = field(
        "architecture/rope_theta", default=10000.0, bounds="> 0", help="RoPE base (position: rope)"
    )
    activation: str = field("architecture/activation", default="gelu_tanh", help="gelu, gelu_tanh, relu or silu")
    norm_eps: float = field("architecture/norm_eps", default=1e-5, bounds="> 0", help="LayerNorm epsilon")

    def __init__(self, name: str = "gpt", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
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
            Block(
                self.n_head,
                self.n_embd,
                hidden,
                self.n_layer,
                self.dropout,
                self.bias,
                self.activation,
                self.norm_eps,
                name=f"block_{i}",
            )
            for i in range(self.n_layer)
        ]
        self.ln_f = LayerNorm(self.norm_eps, self.bias, name="ln_f")
