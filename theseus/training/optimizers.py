"""Optimizers by name, with LM defaults: AdamW, beta_2 = 0.95, weight decay 0.1, clip 1.0."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import keras

NO_DECAY = ("bias", "gamma", "beta", "norm", "embeddings")
"""Substrings of variable names that get no weight decay: biases, norm scales/shifts and
embedding tables (Keras matches `exclude_from_weight_decay(var_names=...)` as substrings
of each variable's name)."""


def _adamw(learning_rate, weight_decay, beta_1, beta_2, epsilon, **kwargs):
    return keras.optimizers.AdamW(learning_rate, weight_decay, beta_1, beta_2, epsilon, **kwargs)


def _adam(learning_rate, weight_decay, beta_1, beta_2, epsilon, **kwargs):
    return keras.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay or None, **kwargs)


def _lion(learning_rate, weight_decay, beta_1, beta_2, epsilon, **kwargs):
    return keras.optimizers.Lion(learning_rate, beta_1, beta_2, weight_decay=weight_decay or None, **kwargs)


def _sgd(learning_rate, weight_decay, beta_1, beta_2, epsilon, **kwargs):
    return keras.optimizers.SGD(learning_rate, momentum=beta_1, weight_decay=weight_decay or None, **kwargs)


OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "lion": _lion,
    "sgd": _sgd,
}


def build_optimizer(
    optimizer: Union[str, keras.optimizers.Optimizer],
    *,
    learning_rate: Any,
    weight_decay: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    epsilon: float = 1e-8,
    global_clipnorm: Optional[float] = 1.0,
    no_decay: Sequence[str] = NO_DECAY,
    gradient_accumulation_steps: Optional[int] = None,
) -> keras.optimizers.Optimizer:
    """An optimizer by name with LM defaults, or `optimizer` itself when it is one.

    Norms, biases and embeddings (`no_decay` substrings of variable names) are excluded
    from weight decay; `global_clipnorm` of 0 or None turns clipping off.
    """
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; known: {sorted(OPTIMIZERS)}")
    built = OPTIMIZERS[optimizer](
        learning_rate,
        weight_decay,
        beta_1,
        beta_2,
        epsilon,
        global_clipnorm=global_clipnorm or None,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    if weight_decay and no_decay:
        built.exclude_from_weight_decay(var_names=list(no_decay))
    return built
