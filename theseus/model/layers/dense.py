"""Dense projection and token embedding with logical axes on their weights.

`Dense.enable_lora(rank, alpha)` is Keras's LoRA (`keras.layers.Dense.enable_lora`) on
theseus's projection: the adapters carry logical axes too, so a sharded model stays sharded.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from theseus.model.axes import Axes
from theseus.model.layers.base import Layer


def matmul(x, kernel, bias=None):
    """`x @ kernel (+ bias)` for `x` (..., in), `kernel` (in, out) and `bias` (out,), as one 2-D product.

    The leading axes are flattened first: XLA's CPU backend runs the 2-D product and its
    gradient about twice as fast as the same `dot_general` with batch axes left in
    (`benchmarks/README.md`, "Projections as one 2-D matmul"); elsewhere the reshapes are free.
    On torch the bias goes into the product (`torch.addmm`, as `nn.Linear` does): one op
    instead of two in every projection of an eager step (XLA fuses the add by itself).
    """
    width = ops.shape(x)[-1]
    flat = ops.reshape(x, (-1, width))
    if bias is not None and keras.backend.backend() == "torch":
        import torch

        kernel = ops.convert_to_tensor(kernel)
        y = torch.addmm(ops.cast(bias, kernel.dtype), ops.cast(flat, kernel.dtype), kernel)
    else:
        y = ops.matmul(flat, kernel)
        y = y + bias if bias is not None else y
    return ops.reshape(y, (*ops.shape(x)[:-1], ops.shape(kernel)[-1]))


class Dense(Layer):
    """`x @ kernel (+ bias)` on the last axis; `axes` names the kernel's (input, output) axes.

    Args:
        units: output width.
        axes: logical axes of the kernel, e.g. `(Axes.N_EMBD, Axes.N_EMBD_FF)`; the bias
            takes the output axis.
        use_bias: add a bias.
        kernel_initializer: Keras initializer for the kernel (biases start at zero).

    Example:
        >>> up = Dense(512, axes=(Axes.N_EMBD, Axes.N_EMBD_FF), name="up")
        >>> up.build((None, 128))
        >>> up.enable_lora(8, alpha=16)  # only the (128, 8) and (8, 512) adapters train now
    """

    config_args = ("units", "axes", "use_bias", "kernel_initializer")
    adaptable = True
    """Whether `lora/targets` may put adapters on it (False for a mixture of experts' gates)."""

    def __init__(
        self,
        units: int,
        axes: tuple[Axes | None, Axes | None],
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.axes = tuple(axes)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.lora_rank: int | None = None
        self.lora_alpha: float | None = None

    @property
    def lora_enabled(self) -> bool:
        return self.lora_rank is not None

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
        if not self.lora_enabled:
            return matmul(x, self.kernel, self.bias)
        # through the rank-r bottleneck: the (in, out) update is never formed
        update = matmul(matmul(x, self.lora_kernel_a), self.lora_kernel_b)
        y = matmul(x, self.kernel) + update * (self.lora_alpha / self.lora_rank)
        return y + self.bias if self.bias is not None else y

    def enable_lora(
        self,
        rank: int,
        alpha: float | None = None,
        a_initializer: Any = "he_uniform",
        b_initializer: Any = "zeros",
    ) -> None:
        """Freeze the kernel and learn a low-rank update, as Keras's `Dense.enable_lora`:
        `y = x @ kernel + alpha / rank * (x @ A) @ B`, A `(in, rank)` and B `(rank, out)`.

        B starts at zero, so the layer computes exactly what it did before. The bias (if
        any) stays trainable only if the caller says so: this freezes the kernel alone.
        `alpha` defaults to `rank` (scale 1), as in Keras.
        """
        if not self.built:
            raise ValueError(f"{self.path}: build the layer before enabling LoRA")
        if self.lora_enabled:
            raise ValueError(f"{self.path}: LoRA is already enabled (rank {self.lora_rank})")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"Argument `rank` must be a positive integer. Received: rank={rank!r}")
        self._tracker.unlock()  # Keras locks a built layer's state; adapters are new state
        self.lora_kernel_a = self.add_weight(
            name="lora_kernel_a",
            shape=(self.kernel.shape[0], rank),
            initializer=keras.initializers.get(a_initializer),
            axes=(self.axes[0], None),
        )
        self.lora_kernel_b = self.add_weight(
            name="lora_kernel_b",
            shape=(rank, self.units),
            initializer=keras.initializers.get(b_initializer),
            axes=(None, self.axes[1]),
        )
        self._tracker.lock()
        self.kernel.trainable = False
        self.lora_rank, self.lora_alpha = rank, float(alpha if alpha is not None else rank)

    def merge_lora(self) -> None:
        """Fold the adapters into the kernel (`kernel += alpha / rank * A @ B`) and drop
        them: the layer is a plain, trainable `Dense` again, computing the same function."""
        if not self.lora_enabled:
            raise ValueError(f"{self.path}: LoRA is not enabled")
        scale = self.lora_alpha / self.lora_rank
        update = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
        self.kernel.assign(self.kernel + ops.cast(update * scale, self.kernel.dtype))
        for name in ("lora_kernel_a", "lora_kernel_b"):
            # what Keras's `del layer.variable` does, less the `gc.collect()` it runs for every
            # variable deleted: 1-2 s each in a large process, a minute to merge a small model
            self._untrack_variable(getattr(self, name))
            object.__delattr__(self, name)
        self.kernel.trainable = True
        self.lora_rank = self.lora_alpha = None

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.units)


class Embedding(Layer):
    """Token embedding `(vocab, width)`; `attend` reuses it as a tied output head.

    Args:
        vocab_size: number of rows.
        width: embedding width.
        axes: logical axes of the table, `(Axes.VOCAB, Axes.N_EMBD)` by default.
        initializer: Keras initializer for the table.
    """

    config_args = ("vocab_size", "width", "axes", "initializer")

    def __init__(
        self,
        vocab_size: int,
        width: int,
        axes: tuple[Axes | None, Axes | None] = (Axes.VOCAB, Axes.N_EMBD),
        initializer: Any = "random_normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.width = width
        self.axes = tuple(axes)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: tuple | None = None) -> None:
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
        return matmul(x, ops.transpose(ops.cast(self.embeddings, x.dtype)))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.width)
