"""Learning-rate schedules for LM training, as Keras `LearningRateSchedule`s.

WSD (warmup-stable-decay; Hägele et al. 2024, MiniCPM) holds the peak rate for most of
the run and decays only at the end, so any stable-phase checkpoint can be cooled down
into a finished model. Cosine and constant are the usual baselines. Every schedule is
computed with `keras.ops` only, so it runs on every backend and inside a compiled step.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Union

import keras
from keras import ops

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def resolve_steps(value: Union[int, float], total_steps: int, name: str) -> int:
    """A "fraction or steps" argument as steps: a float in [0, 1] is a fraction of
    `total_steps`, an int > 1 a number of steps (levanter's `warmup: int | float`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"Argument `{name}` must be a fraction in [0, 1] or a step count. Received: {name}={value!r}")
    if isinstance(value, float) or value <= 1:
        if value > 1:
            raise ValueError(f"Argument `{name}` as a fraction must be in [0, 1]. Received: {name}={value}")
        return int(round(value * total_steps))
    return int(value)


def _check_positive(**kwargs: Any) -> None:
    for name, value in kwargs.items():
        if not value > 0:
            raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value}")


def _check_fraction(**kwargs: Any) -> None:
    for name, value in kwargs.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Argument `{name}` must be in [0, 1]. Received: {name}={value}")


def _warmup(step, peak_lr: float, warmup_steps: int, start_fraction: float):
    """Linear from `start_fraction * peak` at step 0 to `peak` at `warmup_steps`."""
    progress = ops.minimum(step / max(warmup_steps, 1), 1.0)
    return peak_lr * (start_fraction + (1.0 - start_fraction) * progress)


def decay_factor(progress, shape: str):
    """From 1 at progress 0 to 0 at progress 1, with the given shape."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + ops.cos(math.pi * progress))
    return 1.0 - ops.sqrt(progress)


@keras.saving.register_keras_serializable(package="theseus")
class WSD(keras.optimizers.schedules.LearningRateSchedule):
    """Warmup, then a stable peak, then a decay over the last `decay` of the run.

    Args:
        peak_lr: the stable learning rate.
        total_steps: optimizer steps in the run.
        warmup: warmup length, a fraction of `total_steps` (float <= 1) or steps (int > 1).
        decay: decay length, likewise.
        decay_shape: "linear", "cosine" or "1-sqrt" (Hägele et al.'s best).
        start_fraction: the rate at step 0, as a fraction of `peak_lr`.
        final_fraction: the rate at the end, as a fraction of `peak_lr`.

    Example:
        >>> schedule = WSD(peak_lr=1e-3, total_steps=10_000, warmup=0.01, decay=0.2)
        >>> keras.optimizers.AdamW(learning_rate=schedule)
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup: Union[int, float] = 0.01,
        decay: Union[int, float] = 0.2,
        decay_shape: str = "1-sqrt",
        start_fraction: float = 0.0,
        final_fraction: float = 0.0,
    ) -> None:
        _check_positive(peak_lr=peak_lr, total_steps=total_steps)
        _check_fraction(start_fraction=start_fraction, final_fraction=final_fraction)
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(f"Argument `decay_shape` must be one of {DECAY_SHAPES}. Received: decay_shape={decay_shape!r}")
        self.peak_lr, self.total_steps = float(peak_lr), int(total_steps)
        self.warmup, self.decay, self.decay_shape = warmup, decay, decay_shape
        self.start_fraction, self.final_fraction = float(start_fraction), float(final_fraction)
        self.warmup_steps = resolve_steps(warmup, self.total_steps, "warmup")
        self.decay_steps = resolve_steps(decay, self.total_steps, "decay")
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError(
                f"Arguments `warmup` + `decay` must fit in total_steps={self.total_steps}. "
                f"Received: warmup={warmup} ({self.warmup_steps} steps), decay={decay} ({self.decay_steps} steps)"
            )

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decay_start = self.total_steps - self.decay_steps
        progress = ops.clip((step - decay_start) / max(self.decay_steps, 1), 0.0, 1.0)
        decayed = self.peak_lr * (
            self.final_fraction + (1.0 - self.final_fraction) * decay_factor(progress, self.decay_shape)
        )
        warm = _warmup(step, self.peak_lr, self.warmup_steps, self.start_fraction)
        in_decay = ops.logical_and(step >= decay_start, self.decay_steps > 0)
        return ops.where(step < self.warmup_steps, warm, ops.where(in_decay, decayed, self.peak_lr))

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "decay": self.decay,
            "decay_shape": self.decay_shape,
            "start_fraction": self.start_fraction,
            "final_fraction": self.final_fraction,
        }


@keras.saving.register_keras_serializable(package="theseus")
class Cosine(keras.optimizers.schedules.LearningRateSchedule):
    """Warmup, then a cosine from `peak_lr` down to `final_fraction * peak_lr` at the end.

    Args:
        peak_lr, total_steps, warmup, start_fraction: as for `WSD`.
        final_fraction: the rate at the end, as a fraction of `peak_lr`.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup: Union[int, float] = 0.01,
        start_fraction: float = 0.0,
        final_fraction: float = 0.1,
    ) -> None:
        _check_positive(peak_lr=peak_lr, total_steps=total_steps)
        _check_fraction(start_fraction=start_fraction, final_fraction=final_fraction)
        self.peak_lr, self.total_steps, self.warmup = float(peak_lr), int(total_steps), warmup
        self.start_fraction, self.final_fraction = float(start_fraction), float(final_fraction)
        self.warmup_steps = resolve_steps(warmup, self.total_steps, "warmup")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        cosine = self.peak_lr * (self.final_fraction + (1.0 - self.final_fraction) * decay_factor(progress, "cosine"))
        warm = _warmup(step, self.peak_lr, self.warmup_steps, self.start_fraction)
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "start_fraction": self.start_fraction,
            "final_fraction": self.final_fraction,
        }


@keras.saving.register_keras_serializable(package="theseus")
class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """Warmup, then `peak_lr` for the rest of the run."""

    def __init__(self, peak_lr: float, total_steps: int = 1, warmup: Union[int, float] = 0, start_fraction: float = 0.0):
        _check_positive(peak_lr=peak_lr, total_steps=total_steps)
        _check_fraction(start_fraction=start_fraction)
        self.peak_lr, self.total_steps, self.warmup = float(peak_lr), int(total_steps), warmup
        self.start_fraction = float(start_fraction)
        self.warmup_steps = resolve_steps(warmup, self.total_steps, "warmup")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = _warmup(step, self.peak_lr, self.warmup_steps, self.start_fraction)
        return ops.where(step < self.warmup_steps, warm, self.peak_lr)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "start_fraction": self.start_fraction,
        }


SCHEDULES: dict[str, type] = {"wsd": WSD, "cosine": Cosine, "constant": Constant}


def build_schedule(
    schedule: Union[str, keras.optimizers.schedules.LearningRateSchedule, Callable],
    *,
    peak_lr: float,
    total_steps: int,
    **kwargs: Any,
) -> Union[keras.optimizers.schedules.LearningRateSchedule, Callable]:
    """A schedule by name (given the arguments its class accepts), or `schedule` itself."""
    if not isinstance(schedule, str):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; known: {sorted(SCHEDULES)}")
    cls = SCHEDULES[schedule]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(peak_lr=peak_lr, total_steps=total_steps, **{k: v for k, v in kwargs.items() if k in accepted})
