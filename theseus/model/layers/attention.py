"""Causal self-attention with separate q/k/v weights, grouped-query heads and RoPE.

Separate weights keep each one's logical axes whole: the query projection is
`(N_EMBD, N_ATTN)`, keys and values `(N_EMBD, N_KV)`, the output `(N_EMBD_OUT, N_EMBD)`,
so tensor parallelism splits heads, never the inside of a head. Where nothing shards them
they are applied as one product (`CausalSelfAttention.project`).

`cache_positions` and `cache_attention_mask` turn a key/value cache's padding mask into
the positions and attention mask a family's `call_with_cache` needs during generation.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import keras
from keras import ops

from theseus.model.axes import Axes
from theseus.model.layers.base import Layer
from theseus.model.layers.dense import Dense, matmul
from theseus.model.layers.norms import RMSNorm
from theseus.model.layers.rotary import apply_rotary


class CausalSelfAttention(Layer):
    """Multi-head causal self-attention (`attend`: `keras.ops.dot_product_attention` where it is fast).

    Args:
        n_head: query heads.
        head_dim: width of one head.
        n_kv_head: key/value heads (grouped-query attention); defaults to `n_head`.
        qkv_bias / out_bias: biases on the q/k/v and output projections.
        qk_norm: RMS-normalise each query and key head before RoPE (Qwen3), with `qk_norm_eps`.
        init_std / out_init_std: normal initializer scales (input / output projections).
    """

    config_args = (
        "n_head",
        "head_dim",
        "n_kv_head",
        "qkv_bias",
        "out_bias",
        "qk_norm",
        "qk_norm_eps",
        "init_std",
        "out_init_std",
    )

    def __init__(
        self,
        n_head: int,
        head_dim: int,
        n_kv_head: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        init_std: float = 0.02,
        out_init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_head, self.head_dim = n_head, head_dim
        if n_head < 1 or head_dim < 1:
            raise ValueError(f"attention needs n_head >= 1 and head_dim >= 1, got n_head={n_head}, head_dim={head_dim}")
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        self.qkv_bias, self.out_bias = qkv_bias, out_bias
        self.qk_norm, self.qk_norm_eps = qk_norm, qk_norm_eps
        self.init_std, self.out_init_std = init_std, out_init_std
        normal = keras.initializers.RandomNormal
        q_width, kv_width = n_head * head_dim, self.n_kv_head * head_dim
        self.query = Dense(q_width, (Axes.N_EMBD, Axes.N_ATTN), qkv_bias, normal(stddev=init_std), name="query")
        self.key = Dense(kv_width, (Axes.N_EMBD, Axes.N_KV), qkv_bias, normal(stddev=init_std), name="key")
        self.value = Dense(kv_width, (Axes.N_EMBD, Axes.N_KV), qkv_bias, normal(stddev=init_std), name="value")
        if qk_norm:
            self.query_norm = RMSNorm(qk_norm_eps, axes=(None,), name="query_norm")
            self.key_norm = RMSNorm(qk_norm_eps, axes=(None,), name="key_norm")

    def build(self, input_shape: tuple) -> None:
        # The output width is the input's, known only now.
        self.output_proj = Dense(
            input_shape[-1],
            (Axes.N_EMBD_OUT, Axes.N_EMBD),
            self.out_bias,
            keras.initializers.RandomNormal(stddev=self.out_init_std),
            name="output",
        )
        for projection in (self.query, self.key, self.value):
            projection.build(input_shape)
        self.output_proj.build((*input_shape[:-1], self.n_head * self.head_dim))
        if self.qk_norm:
            self.query_norm.build((self.head_dim,))
            self.key_norm.build((self.head_dim,))

    def call(self, x, rotary=None, cache=None, cache_index=None, attention_mask=None):
        """Attend causally over `x` (B, T, C).

        Args:
            rotary: `(cos, sin)` tables for the T positions, or None (no RoPE).
            cache: `(keys, values)` each (B, S, n_kv_head, hd) holding earlier positions;
                the new keys/values are written at `cache_index` and attention spans the
                whole cache under `attention_mask`.
            attention_mask: (B, T, S) boolean, True where a query may attend a key. With
                no cache and no mask, attention is causal.

        Returns:
            The output (B, T, C), and the updated cache when one was given.
        """
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        q, k, v = self.project(x)
        q = ops.reshape(q, (batch, length, self.n_head, self.head_dim))  # (B, T, H, hd)
        k = ops.reshape(k, (batch, length, self.n_kv_head, self.head_dim))  # (B, T, Hkv, hd)
        v = ops.reshape(v, (batch, length, self.n_kv_head, self.head_dim))
        if self.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            cached_k, cached_v = cache
            start = [0, cache_index, 0, 0]
            k = ops.slice_update(cached_k, start, ops.cast(k, cached_k.dtype))  # (B, S, Hkv, hd)
            v = ops.slice_update(cached_v, start, ops.cast(v, cached_v.dtype))
            cache = (k, v)
        if self.n_kv_head != self.n_head:  # grouped-query: each kv head serves a group of queries
            groups = self.n_head // self.n_kv_head
            k_all, v_all = ops.repeat(k, groups, axis=2), ops.repeat(v, groups, axis=2)
        else:
            k_all, v_all = k, v
        y = attend(q, k_all, ops.cast(v_all, q.dtype), attention_mask)  # (B, T, H, hd)
        y = self.output_proj(ops.reshape(y, (batch, length, self.n_head * self.head_dim)))
        return (y, cache) if cache is not None else y

    def project(self, x):
        """The queries, keys and values of `x` (B, T, C), each (B, T, width).

        Without a distribution and without adapters, as one product with the three kernels side
        by side, the way nanoGPT's `c_attn` is one weight: one matmul instead of three forward and
        six backward per layer (`benchmarks/README.md`, "the PyTorch step closed"). The weights
        stay three, so each keeps its logical axes whole, and under a mesh each projection runs
        on its own shards (joining sharded kernels would gather them).
        """
        projections = (self.query, self.key, self.value)
        if keras.distribution.distribution() is not None or any(p.lora_enabled for p in projections):
            return tuple(projection(x) for projection in projections)
        kernel = ops.concatenate([p.kernel for p in projections], axis=1)
        bias = ops.concatenate([p.bias for p in projections]) if self.qkv_bias else None
        q_width = self.n_head * self.head_dim
        return ops.split(matmul(x, kernel, bias), [q_width, q_width + self.n_kv_head * self.head_dim], axis=-1)


@functools.cache
def fused_attention_available() -> bool:
    """Whether `keras.ops.dot_product_attention` is the fast way to attend here.

    It is on accelerators (cuDNN flash attention on GPUs, Keras picks it by itself) and on
    torch (`scaled_dot_product_attention`). On JAX's CPU backend its XLA path is slower than
    the plain matmul-softmax-matmul below: 48 against 69 ms for a forward and backward pass
    of one layer at batch 16, 4 heads of 64, 256 tokens (`benchmarks/README.md`).
    """
    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.default_backend() != "cpu"


def attend(q, k, v, mask=None, fused: bool | None = None):
    """`softmax(q kᵀ / sqrt(hd)) v` per head, for q (B, T, H, hd) and k, v (B, S, H, hd).

    `mask` (B, T, S) is True where a query may attend a key; None means causal (T == S).
    `fused` picks `keras.ops.dot_product_attention` (True) or the explicit form (False);
    None picks whichever `fused_attention_available` says. Both give the same values.
    """
    if fused if fused is not None else fused_attention_available():
        if mask is None:
            return ops.dot_product_attention(q, k, v, is_causal=True)
        return ops.dot_product_attention(q, k, v, mask=ops.expand_dims(mask, axis=1))
    head_dim = ops.shape(q)[-1]
    queries = ops.transpose(q * ops.cast(1.0 / math.sqrt(head_dim), q.dtype), (0, 2, 1, 3))  # (B, H, T, hd)
    scores = ops.cast(ops.matmul(queries, ops.transpose(k, (0, 2, 3, 1))), "float32")  # (B, H, T, S)
    if mask is None:
        length = ops.shape(q)[1]
        causal = ops.tril(ops.ones((length, length), "bool"))
        scores = scores + ops.where(causal, 0.0, -1e30)  # a constant: XLA folds it
    else:
        scores = ops.where(ops.expand_dims(mask, axis=1), scores, -1e30)
    probs = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
    return ops.transpose(ops.matmul(probs, ops.transpose(v, (0, 2, 1, 3))), (0, 2, 1, 3))  # (B, T, H, hd)


def cache_positions(padding_mask):
    """(B, S) each cache slot's position in its row: the real tokens before it.

    Rows are left-padded to a common length, so a row's first real token sits at slot
    `S - length` but at position 0; padding slots read 0 (they are never attended).
    """
    return ops.maximum(ops.cumsum(ops.cast(padding_mask, "int32"), axis=1) - 1, 0)


def cache_attention_mask(padding_mask, start, length: int, sliding_window: int | None = None):
    """(B, T, S) True where the token in cache slot `start + t` may attend slot `s`.

    Allowed: earlier or equal slots holding a real token (`padding_mask` (B, S) is true
    on them), within `sliding_window` positions when one is given; and always the slot
    itself, so a padding query's softmax is never empty (NaN would leak into the cache).
    """
    slots = ops.shape(padding_mask)[1]
    query = ops.arange(length, dtype="int32")[:, None] + ops.cast(start, "int32")  # (T, 1)
    key = ops.arange(slots, dtype="int32")[None, :]  # (1, S)
    allowed = ops.logical_and(key <= query, ops.expand_dims(ops.cast(padding_mask, "bool"), 1))  # (B, T, S)
    if sliding_window is not None:
        positions = cache_positions(padding_mask)  # (B, S)
        query_positions = ops.slice(positions, [0, start], [ops.shape(positions)[0], length])  # (B, T)
        allowed = ops.logical_and(allowed, query_positions[:, :, None] - positions[:, None, :] < sliding_window)
    return ops.logical_or(allowed, ops.expand_dims(key == query, 0))
