"""Gradient and update norms, measured by the optimizer as it applies each update.

The optimizer is the one place that sees the gradients on every backend (JAX's stateless
step, TensorFlow's graph, torch's eager step all go through `Optimizer.apply`), so that is
where the norms are taken. They live in two optimizer variables, which the metrics logger
reads at its log steps only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


def global_norm(tensors: Sequence[Any]) -> Any:
    """sqrt(sum of squares) over a list of tensors (None entries skipped), in float32.

    On torch one `_foreach_norm` over the list (as `torch.nn.utils.clip_grad_norm_` does): the
    per-tensor form is three small ops a tensor, about 5 ms a step for a 4-layer GPT's 52 weights.
    """
    tensors = [t for t in tensors if t is not None]
    if keras.backend.backend() == "torch":
        import torch

        norms = torch._foreach_norm([ops.convert_to_tensor(t) for t in tensors], 2, dtype=torch.float32)
        return torch.linalg.vector_norm(torch.stack(norms))
    squares = [ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors]
    return ops.sqrt(sum(squares[1:], squares[0]))


def clip_by_global_norm(tensors: Sequence[Any], norm: Any, clip_norm: float) -> list:
    """Keras's `clip_by_global_norm` given the global `norm` (so a tracked norm is computed once):
    scaled by `clip_norm / norm` where that is below 1, NaN where the norm is not finite."""
    scale = clip_norm * ops.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    if keras.backend.backend() == "torch":
        import torch

        return torch._foreach_mul([ops.convert_to_tensor(t) for t in tensors], scale)
    return [t * scale for t in tensors]


class NormTracking:
    """Mixin for a Keras optimizer: keep the last update's gradient and update norms.

    `gradient_norm` is the global norm of the (accumulated) gradient before clipping;
    `update_norm` the global norm of the change the step made to the weights, weight
    decay included. Under gradient accumulation both describe the last real update.
    """

    measuring = True
    """Whether the next `apply` measures the norms. A compiled step (JAX, TensorFlow, torch.compile)
    is traced once and always measures; on torch's eager step `MetricsLogger` turns it on only for
    the steps that log: the norms are a few hundred small eager ops a step (a copy of every weight,
    two global norms; the PyTorch profile in `benchmarks/README.md`'s floors section)."""

    def build(self, variables: Sequence[keras.Variable]) -> None:
        super().build(variables)
        self.gradient_norm = self.add_variable((), initializer="zeros", dtype="float32", name="gradient_norm")
        self.update_norm = self.add_variable((), initializer="zeros", dtype="float32", name="update_norm")

    def _clip_gradients(self, grads: list) -> list:
        clips_globally = bool(self.global_clipnorm) and not self.clipnorm  # Keras's `_clip_gradients` order
        if not (self.measuring or clips_globally):
            return super()._clip_gradients(grads)
        norm = global_norm(grads)
        if self.measuring:
            self.gradient_norm.assign(norm)
        return (
            clip_by_global_norm(grads, norm, self.global_clipnorm) if clips_globally else super()._clip_gradients(grads)
        )

    def apply(self, grads: list, trainable_variables: Any = None) -> None:
        if not self.measuring:
            return super().apply(grads, trainable_variables)
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        before = [ops.copy(v.value) for v in variables]  # torch updates in place
        super().apply(grads, trainable_variables)
        self.update_norm.assign(global_norm([v.value - b for v, b in zip(variables, before)]))


_TRACKING: dict[type, type] = {}


def track_norms(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """`optimizer`, made to keep its norms (see `NormTracking`); call before it is built.

    Works for any Keras optimizer class, a user's own included, by giving the instance a
    subclass that mixes `NormTracking` in (the same trick as `torch.nn.utils.parametrize`).
    The subclass keeps the class's name and module, so the optimizer still serializes as
    the class it was.
    """
    cls = type(optimizer)
    if isinstance(optimizer, NormTracking):
        return optimizer
    if optimizer.built:
        raise ValueError(f"track_norms needs an optimizer that is not built yet. Received: {optimizer!r}")
    if cls not in _TRACKING:
        _TRACKING[cls] = type(
            cls.__name__, (NormTracking, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        )
    optimizer.__class__ = _TRACKING[cls]
    return optimizer
