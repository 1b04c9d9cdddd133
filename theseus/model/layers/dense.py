"""Dense projection and token embedding with logical axes on their weights."""

from __future__ import annotations

from typing import Any, Optional

import keras
from keras import ops

from theseus.model.axes import Axes
from theseus.model.module import Module


class Dense(Module):
    """`x @ kernel (+ bias)` on the last axis; `axes` names the kernel's (input, output) axes.

    Args:
        units: output width.
        axes: logical axes of the kernel, e.g. `(Axes.N_EMBD, Axes.N_EMBD_FF)`; the bias
            takes the output axis.
        use_bias: add a bias.
        kernel_initializer: Keras initializer for the kernel (biases start at zero).

    Example:
        >>> up = Dense(512, axes=(Axes.N_EMBD, Axes.N_EMBD_FF), name="up")
    """

    def __init__(
        self,
        units: int,
        axes: tuple[Optional[Axes], Optional[Axes]],
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.axes = tuple(axes)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape: tuple) -> None:
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.units),
            initializer=self.kernel_initializer,
            axes=self.axes,
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer="zeros", axes=self.axes[1:])
            if self.use_bias
            else None
        )

    def call(self, x):
        y = ops.matmul(x, self.kernel)
        return y + self.bias if self.bias is not None else y

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "axes": [a.value if a is not None else None for a in self.axes],
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


class Embedding(Module):
    """Token embedding `(vocab, width)`; `attend` reuses it as a tied output head.

    Args:
        vocab_size: number of rows.
        width: embedding width.
        axes: logical axes of the table, `(Axes.VOCAB, Axes.N_EMBD)` by default.
        initializer: Keras initializer for the table.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int,
        axes: tuple[Optional[Axes], Optional[Axes]] = (Axes.VOCAB, Axes.N_EMBD),
        initializer: Any = "random_normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.width = width
        self.axes = tuple(axes)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: Optional[tuple] = None) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.width),
            initializer=self.initializer,
            axes=self.axes,
        )

    def call(self, ids):
        return ops.take(self.embeddings, ops.cast(ids, "int32"), axis=0)

    def attend(self, x):
        """Logits of `x` against every row: `x @ embeddings.T`."""
        return ops.matmul(x, ops.transpose(ops.cast(self.embeddings, x.dtype)))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.width)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "width": self.width,
            "axes": [a.value if a is not None else None for a in self.axes],
            "initializer": keras.initializers.serialize(self.initializer),
        }
