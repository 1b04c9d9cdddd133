"""Optimizers by name, with language-model defaults: AdamW, beta_2 = 0.95, weight decay 0.1,
global-norm clipping at 1.0, and no weight decay on biases, norms and embeddings.

Which variables are decayed is decided by their *path* (`"gpt/block_0/ln_1/gamma"`), the same
way on every backend. Keras's own `exclude_from_weight_decay(var_names=...)` cannot do that:
it regex-searches `variable.name`, which on JAX and torch is the short name (`"gamma"`) but on
TensorFlow the tf.Variable's name, i.e. the path plus `":0"`; so `var_names=["norm"]` spares a
`LayerNormalization`'s scale on TensorFlow only. The `Masked*` optimizers below instead pass
the matching variables themselves (`var_list=`) once they are known, when the optimizer is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras

NO_DECAY = ("bias", "norm", "embedding", "gamma", "beta")
"""Substrings of variable paths that get no weight decay. "gamma"/"beta" are the weights of
Keras's and theseus's norm layers whatever the layer is called (theseus's GPT names its
norms `ln_1`, `ln_f`, which "norm" alone would miss); "embedding" matches `embeddings`."""


class DecayMask:
    """Mixin for a Keras optimizer: no weight decay for variables whose path contains a `no_decay` string.

    The mask is applied in `build` and replaces any earlier `exclude_from_weight_decay` call;
    pass `no_decay=()` to manage exclusions with Keras's own method instead.

    Args:
        no_decay: substrings of `variable.path` (plain substrings, not regexes).
        *args, **kwargs: the Keras optimizer's arguments.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        return super().__new__(_with_backend_update(cls))

    def __init__(self, *args: Any, no_decay: Sequence[str] = NO_DECAY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.no_decay = tuple(no_decay)

    def build(self, variables: Sequence[keras.Variable]) -> None:
        if self.no_decay:
            # Keras requires exclusions before its own `build`; this is the first time the variables are known.
            excluded = [v for v in variables if any(part in v.path for part in self.no_decay)]
            self.exclude_from_weight_decay(var_list=excluded)
        super().build(variables)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "no_decay": list(self.no_decay)}


_BACKEND_UPDATE: dict[type, type] = {}


def _with_backend_update(cls: type) -> type:
    """`cls`, with the update of the backend's own version of the Keras optimizer it extends mixed in.

    Keras swaps in a backend's version only for its exact classes: on torch, `keras.optimizers.AdamW`
    becomes a subclass that updates every variable at once with `torch._foreach_*` ops, while a
    subclass such as `MaskedAdamW` would run the generic update, about ten small ops per variable
    per step. Which class Keras picks is read off the instance its own `__new__` makes.
    """
    if cls not in _BACKEND_UPDATE:
        extended = next(base for base in cls.__mro__ if base.__module__.startswith("keras."))
        backend_class = type(extended.__new__(extended))
        if issubclass(cls, backend_class):
            _BACKEND_UPDATE[cls] = cls
        else:
            attrs = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
            mixed = type(cls.__name__, (cls, backend_class), attrs)
            package, _, name = keras.saving.get_registered_name(cls).rpartition(">")
            _BACKEND_UPDATE[cls] = keras.saving.register_keras_serializable(package, name)(mixed)  # saved as `cls`
    return _BACKEND_UPDATE[cls]


@keras.saving.register_keras_serializable(package="theseus")
class MaskedAdamW(DecayMask, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with a path-based weight-decay mask (see `DecayMask`)."""


@keras.saving.register_keras_serializable(package="theseus")
class MaskedLion(DecayMask, keras.optimizers.Lion):
    """`keras.optimizers.Lion` with a path-based weight-decay mask (see `DecayMask`)."""


@keras.saving.register_keras_serializable(package="theseus")
class MaskedSGD(DecayMask, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with a path-based weight-decay mask (see `DecayMask`)."""


# Each builder is called with `learning_rate`, `global_clipnorm` and
# `gradient_accumulation_steps`, plus those of `build_optimizer`'s hyperparameters
# (`weight_decay`, `beta_1`, `beta_2`, `epsilon`, `no_decay`) that it names.


def _adamw(
    *, weight_decay: float, beta_1: float, beta_2: float, epsilon: float, no_decay: Sequence[str], **base: Any
) -> keras.optimizers.Optimizer:
    return MaskedAdamW(
        weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, no_decay=no_decay, **base
    )


def _adam(*, beta_1: float, beta_2: float, epsilon: float, **base: Any) -> keras.optimizers.Optimizer:
    # Keras 3 decouples weight decay for every optimizer, so Adam with decay would be AdamW:
    # "adam" is the variant without it.
    return keras.optimizers.Adam(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **base)


def _lion(
    *, weight_decay: float, beta_1: float, beta_2: float, no_decay: Sequence[str], **base: Any
) -> keras.optimizers.Optimizer:
    return MaskedLion(weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2, no_decay=no_decay, **base)


def _sgd(*, weight_decay: float, beta_1: float, no_decay: Sequence[str], **base: Any) -> keras.optimizers.Optimizer:
    # beta_1 plays the role of momentum, as in the LM optimizer comparisons that use SGD.
    return MaskedSGD(weight_decay=weight_decay, momentum=beta_1, no_decay=no_decay, **base)


OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "lion": _lion,
}
"""Optimizer builders by name: "adamw" (default), "adam" (no weight decay), "sgd" (momentum
= beta_1, decoupled weight decay), "lion" (Lion; betas as given, epsilon unused)."""


def build_optimizer(
    name_or_optimizer: str | keras.optimizers.Optimizer,
    *,
    learning_rate: Any,
    weight_decay: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    epsilon: float = 1e-8,
    global_clipnorm: float | None = 1.0,
    no_decay: Sequence[str] = NO_DECAY,
    gradient_accumulation_steps: int | None = None,
) -> keras.optimizers.Optimizer:
    """The optimizer `name_or_optimizer` names, with LM defaults; an optimizer instance is returned unchanged.

    Args:
        name_or_optimizer: a name from `OPTIMIZERS`, or a `keras.optimizers.Optimizer`.
        learning_rate: a float or a `LearningRateSchedule`.
        weight_decay: decoupled weight decay (scaled by the learning rate, as in Keras).
        beta_1, beta_2, epsilon: Adam's (and, for beta_1/beta_2, Lion's) coefficients.
        global_clipnorm: clip the global gradient norm to this; 0 or None turns clipping off.
        no_decay: substrings of variable paths that get no weight decay (see `DecayMask`).
        gradient_accumulation_steps: Keras's gradient accumulation; None for none.
    """
    if isinstance(name_or_optimizer, keras.optimizers.Optimizer):
        return name_or_optimizer
    if name_or_optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name_or_optimizer!r}. Known optimizers: {sorted(OPTIMIZERS)}")
    builder = OPTIMIZERS[name_or_optimizer]
    hyperparameters = dict(
        weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, no_decay=tuple(no_decay)
    )
    named = inspect.signature(builder).parameters
    return builder(
        learning_rate=learning_rate,
        global_clipnorm=global_clipnorm or None,
        gradient_accumulation_steps=gradient_accumulation_steps,
        **{name: value for name, value in hyperparameters.items() if name in named},
    )
