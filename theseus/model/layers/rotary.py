"""Rotary position embedding (RoFormer), in the "rotate half" layout Hugging Face uses.

`rotary_tables` gives the cos/sin tables for a set of positions, including Llama 3's
frequency scaling; `apply_rotary` rotates queries or keys with them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
    """`1 / theta^(2i/d)` per rotated pair, rescaled as `scaling["rope_type"]` asks.

    Supported scalings: None / "default", "linear" (`factor`), and "llama3" (`factor`,
    `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`).
    """
    if head_dim % 2 or theta <= 0:
        raise ValueError(
            f"rotary positions need an even head width and theta > 0, got head_dim={head_dim}, theta={theta}"
        )
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv.astype(np.float32)
    if kind == "linear":
        return (inv / scaling["factor"]).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        original = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = original / low, original / high
        smooth = (original / wavelen - low) / (high - low)
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        middle = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        blended = (1 - smooth) * inv / factor + smooth * inv
        return np.where(middle, blended, scaled).astype(np.float32)
    raise ValueError(f"Unsupported rope scaling type {kind!r}; supported: default, linear, llama3")


def rotary_tables(positions, inv_freq: np.ndarray):
    """cos and sin of `positions * inv_freq`, each `(..., T, head_dim)` in float32."""
    angles = ops.cast(positions, "float32")[..., None] * ops.convert_to_tensor(inv_freq)  # (.., T, hd/2)
    angles = ops.concatenate([angles, angles], axis=-1)  # (.., T, hd)
    return ops.cos(angles), ops.sin(angles)


def apply_rotary(x, cos, sin):
    """Rotate `x` (B, T, H, hd) by the tables `cos`, `sin` ((T, hd) or (B, T, hd))."""
    dtype = x.dtype
    x = ops.cast(x, "float32")
    half = x.shape[-1] // 2
    rotated = ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = ops.expand_dims(cos, axis=-2)  # broadcast over heads
    sin = ops.expand_dims(sin, axis=-2)
    return ops.cast(x * cos + rotated * sin, dtype)
