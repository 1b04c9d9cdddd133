"""LayerNorm (GPT-2) and RMSNorm (Llama), computed in float32 for stability."""

from __future__ import annotations

from typing import Any

from keras import ops

from theseus.model.axes import Axes
from theseus.model.layers.base import Layer


class Norm(Layer):
    """Normalisation over the last axis, computed in float32 and cast back to the input's dtype.

    Args:
        epsilon: added to the variance (or mean square).
        axes: logical axes of the normalised dimension (None for a per-head norm).
    """

    def __init__(self, epsilon: float, axes=(Axes.N_EMBD,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.axes = tuple(axes)

    def call(self, x):
        return ops.cast(self.normalize(ops.cast(x, "float32")), x.dtype)

    def normalize(self, x):
        """The float32 result for float32 `x`."""
        raise NotImplementedError


class LayerNorm(Norm):
    """Layer normalisation over the last axis, with scale and (optional) shift.

    Args:
        epsilon: added to the variance.
        use_bias: learn a shift (`beta`).
        axes: logical axes of the normalised dimension.
    """

    config_args = ("epsilon", "use_bias", "axes")

    def __init__(self, epsilon: float = 1e-5, use_bias: bool = True, axes=(Axes.N_EMBD,), **kwargs: Any) -> None:
        super().__init__(epsilon, axes, **kwargs)
        self.use_bias = use_bias

    def build(self, input_shape: tuple) -> None:
        width = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(width,), initializer="ones", axes=self.axes)
        self.beta = (
            self.add_weight(name="beta", shape=(width,), initializer="zeros", axes=self.axes) if self.use_bias else None
        )

    def normalize(self, x):
        # Keras's op: one fused kernel and its backward on torch (the composite took 5 kernels each way).
        return ops.layer_normalization(x, self.gamma, self.beta, epsilon=self.epsilon)


class RMSNorm(Norm):
    """Root-mean-square normalisation (no centring, no shift), as in Llama.

    Args:
        epsilon: added to the mean square.
        unit_offset: scale by `1 + gamma` (Gemma's convention) instead of `gamma`.
        axes: logical axes of the normalised dimension (None for a per-head norm).
    """

    config_args = ("epsilon", "unit_offset", "axes")

    def __init__(self, epsilon: float = 1e-6, unit_offset: bool = False, axes=(Axes.N_EMBD,), **kwargs: Any) -> None:
        super().__init__(epsilon, axes, **kwargs)
        self.unit_offset = unit_offset

    def build(self, input_shape: tuple) -> None:
        initializer = "zeros" if self.unit_offset else "ones"
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer=initializer, axes=self.axes)

    def normalize(self, x):
        scale = ops.cast(self.gamma, "float32")
        return ops.rms_normalization(x, 1.0 + scale if self.unit_offset else scale, epsilon=self.epsilon)
