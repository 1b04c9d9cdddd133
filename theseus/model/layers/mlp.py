"""Feed-forward blocks: GPT's `up -> activation -> down` and Llama's gated (SwiGLU) MLP."""

from __future__ import annotations

from typing import Any

import keras

from theseus.model.axes import Axes
from theseus.model.layers.base import Layer
from theseus.model.layers.dense import Dense

ACTIVATIONS = {
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "gelu_tanh": lambda x: keras.activations.gelu(x, approximate=True),
    "relu": keras.activations.relu,
    "silu": keras.activations.silu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(Layer):
    """`down(act(up(x)))`: the column-parallel up and row-parallel down projections.

    Args:
        width: the residual width (output size).
        hidden: the hidden width.
        activation: a name from `ACTIVATIONS`.
        use_bias: biases on both projections.
        init_std / out_init_std: normal initializer scales for up / down.
    """

    config_args = ("width", "hidden", "activation", "use_bias", "init_std", "out_init_std")

    def __init__(
        self,
        width: int,
        hidden: int,
        activation: str = "gelu_tanh",
        use_bias: bool = True,
        init_std: float = 0.02,
        out_init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.width, self.hidden, self.activation, self.use_bias = width, hidden, activation, use_bias
        self.init_std, self.out_init_std = init_std, out_init_std
        self._act = get_activation(activation)
        normal = keras.initializers.RandomNormal
        self.up = Dense(hidden, (Axes.N_EMBD, Axes.N_EMBD_FF), use_bias, normal(stddev=init_std), name="up")
        self.down = Dense(width, (Axes.N_EMBD_FF, Axes.N_EMBD), use_bias, normal(stddev=out_init_std), name="down")

    def build(self, input_shape: tuple) -> None:
        self.up.build(input_shape)
        self.down.build((*input_shape[:-1], self.hidden))

    def call(self, x):
        return self.down(self._act(self.up(x)))


class GatedMLP(MLP):
    """`down(act(gate(x)) * up(x))` (SwiGLU with `activation="silu"`), as in Llama."""

    def __init__(self, width: int, hidden: int, activation: str = "silu", use_bias: bool = False, **kwargs: Any):
        super().__init__(width, hidden, activation, use_bias, **kwargs)
        normal = keras.initializers.RandomNormal(stddev=self.init_std)
        self.gate = Dense(hidden, (Axes.N_EMBD, Axes.N_EMBD_FF), use_bias, normal, name="gate")

    def build(self, input_shape: tuple) -> None:
        self.gate.build(input_shape)
        super().build(input_shape)

    def call(self, x):
        return self.down(self._act(self.gate(x)) * self.up(x))
