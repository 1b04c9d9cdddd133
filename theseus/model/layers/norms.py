"""LayerNorm (GPT-2) and RMSNorm (Llama), computed in float32 for stability."""

from __future__ import annotations

from typing import Any

from keras import ops

from theseus.model.axes import Axes
from theseus.model.module import Module


def _names(axes):
    return [a.value if a is not None else None for a in axes]


class LayerNorm(Module):
    """Layer normalisation over the last axis, with scale and (optional) shift.

    Args:
        epsilon: added to the variance.
        use_bias: learn a shift (`beta`).
        axes: logical axes of the normalised dimension.
    """

    def __init__(self, epsilon: float = 1e-5, use_bias: bool = True, axes=(Axes.N_EMBD,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.use_bias = use_bias
        self.axes = tuple(axes)

    def build(self, input_shape: tuple) -> None:
        width = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(width,), initializer="ones", axes=self.axes)
        self.beta = (
            self.add_weight(name="beta", shape=(width,), initializer="zeros", axes=self.axes)
            if self.use_bias
            else None
        )

    def call(self, x):
        dtype = x.dtype
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * ops.rsqrt(var + self.epsilon) * ops.cast(self.gamma, "float32")
        if self.beta is not None:
            y = y + ops.cast(self.beta, "float32")
        return ops.cast(y, dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon, "use_bias": self.use_bias, "axes": _names(self.axes)}


class RMSNorm(Module):
    """Root-mean-square normalisation (no centring, no shift), as in Llama.

    Args:
        epsilon: added to the mean square.
        unit_offset: scale by `1 + gamma` (Gemma's convention) instead of `gamma`.
        axes: logical axes of the normalised dimension (None for a per-head norm).
    """

    def __init__(self, epsilon: float = 1e-6, unit_offset: bool = False, axes=(Axes.N_EMBD,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.unit_offset = unit_offset
        self.axes = tuple(axes)

    def build(self, input_shape: tuple) -> None:
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer="zeros" if self.unit_offset else "ones",
            axes=self.axes,
        )

    def call(self, x):
        dtype = x.dtype
        x = ops.cast(x, "float32")
        y = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        scale = ops.cast(self.gamma, "float32")
        return ops.cast(y * (1.0 + scale if self.unit_offset else scale), dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon, "unit_offset": self.unit_offset, "axes": _names(self.axes)}
