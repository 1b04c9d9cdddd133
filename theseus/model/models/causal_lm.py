"""`CausalLM`: what every decoder-only family shares as a trainable Keras model."""

from __future__ import annotations

from typing import Any

import keras
from keras.src.backend import set_keras_mask

from theseus.model.module import Module

IGNORE_INDEX = -100
"""A target equal to this is padding or a masked (e.g. prompt) token: it adds no loss."""


@keras.saving.register_keras_serializable(package="theseus")
class CausalLMLoss(keras.losses.Loss):
    """Next-token cross-entropy on float32 logits, averaged over the targets that count.

    The same loss as `SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)`
    (tested equal), computed as `logsumexp(logits) - logits[target]`: Keras's version masks
    the full (B, T, vocab) logits and multiplies them by a one-hot of the targets, which
    cost a sixth of a training step at vocabulary 8192 on CPU (`benchmarks/README.md`).
    """

    def __init__(self, name: str = "causal_lm_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, "int32")
        valid = keras.ops.not_equal(y_true, IGNORE_INDEX)
        target = keras.ops.where(valid, y_true, 0)[..., None]
        picked = keras.ops.take_along_axis(y_pred, target, axis=-1)[..., 0]
        losses = keras.ops.where(valid, keras.ops.logsumexp(y_pred, axis=-1) - picked, 0.0)
        # Keras's own masked losses do this: the reduction then averages over valid targets only.
        set_keras_mask(losses, mask=valid)
        return losses


class CausalLM(Module, keras.Model):
    """A `Module` that is also a `keras.Model`: `model.fit` works on it directly.

    Inputs are token ids (B, T), outputs float32 logits (B, T, vocab); targets are the
    inputs shifted by one, with `IGNORE_INDEX` where no loss should be taken.
    """

    def compile(self, optimizer: Any = "adamw", loss: Any = "auto", **kwargs: Any) -> None:
        """`keras.Model.compile` with the causal-LM loss as the default (`loss="auto"`)."""
        super().compile(optimizer=optimizer, loss=CausalLMLoss() if loss == "auto" else loss, **kwargs)


class ModuleLM(CausalLM):
    """A trainable model around a plain `Module` that maps token ids to logits.

    Lets a user subclass `Module` directly (as the tutorial shows) and still train it
    with `model.fit`; its sharding rules and weights' logical axes carry over.
    """

    def __init__(self, module: Module, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", f"{module.name}_lm"), **kwargs)
        self.module = module

    @property
    def sharding(self):
        return self.module.sharding

    def build(self, input_shape: tuple) -> None:
        self.module.build(input_shape)
        self.built = True

    def call(self, token_ids, training=False):
        return keras.ops.cast(self.module(token_ids, training=training), "float32")


def as_causal_lm(module: Module) -> CausalLM:
    """`module` itself when it is already a model, else wrapped in a `ModuleLM`."""
    return module if isinstance(module, keras.Model) else ModuleLM(module)
