"""Learning-rate schedules for language-model pretraining, as Keras `LearningRateSchedule`s.

The default is WSD, warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024,
"Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"): a short
warmup, a long constant phase and a final decay (best with the "1-sqrt" shape). It matches
cosine at the same compute, and because the peak phase does not depend on the run's length,
one run can be continued or branched into decays of different lengths. `Cosine` is the
classic baseline; `Constant` is warmup then a flat learning rate, for debugging and ablations.

Every schedule is a pure function of the optimizer step written with `keras.ops` only, so it
runs unchanged under JAX, TensorFlow and torch, and inside a compiled train step. Warmup
and decay lengths are "fraction or steps", as in levanter: a float in [0, 1] is a fraction
of `total_steps`, an int is a number of steps.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")

FractionOrSteps = int | float


# ------------------------------------------------------------------------- validation


def _check_real(name: str, value: Any, low: float, high: float = math.inf) -> float:
    # bool is an int to Python; `warmup=True` is a mistake, not one step.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        bounds = f"in [{low:g}, {high:g}]" if high != math.inf else f">= {low:g}"
        raise ValueError(f"Argument `{name}` must be a number {bounds}. Received: {name}={value!r}")
    return float(value)


def _check_total_steps(total_steps: Any) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"Argument `total_steps` must be an int >= 1. Received: total_steps={total_steps!r}")
    return int(total_steps)


def _resolve_steps(name: str, value: Any, total_steps: int) -> int:
    """Steps meant by a "fraction or steps" argument: a float in [0, 1] or an int >= 0.

    The type decides, so `1` is one step and `1.0` is all of `total_steps`: that is how a
    YAML `warmup: 100` and `warmup: 0.05` both read naturally.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and 0.0 <= value <= 1.0:
        return round(float(value) * total_steps)
    raise ValueError(
        f"Argument `{name}` must be a fraction of `total_steps` (a float in [0, 1]) "
        f"or a number of steps (an int >= 0). Received: {name}={value!r}"
    )


def _check_phases_fit(total_steps: int, **phases: tuple[FractionOrSteps, int]) -> None:
    """Raise unless the phases, given as name=(argument, resolved steps), fit in `total_steps`."""
    if sum(steps for _, steps in phases.values()) > total_steps:
        names = " + ".join(f"`{name}` ({steps} steps)" for name, (_, steps) in phases.items())
        received = ", ".join(f"{name}={value!r}" for name, (value, _) in phases.items())
        raise ValueError(
            f"Arguments {names} must fit in total_steps={total_steps}. Received: {received}, total_steps={total_steps}"
        )


# --------------------------------------------------------------------------- schedules


def _as_step(step: Any) -> Any:
    # The optimizer passes its int64 (int32 on JAX) `iterations`; TensorFlow will not mix
    # int64 with Python floats, and float32 keeps every backend computing the same values.
    return ops.cast(step, "float32")


class Schedule(LearningRateSchedule):
    """What every theseus schedule shares: its argument checks, the linear warmup, the
    decay shapes and `get_config`.

    A subclass's constructor arguments are its config (`get_config` reads each back from
    the attribute of the same name); it says what follows the warmup in `after_warmup`.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup: FractionOrSteps,
        start_fraction: float,
        final_fraction: float = 0.0,
        decay_shape: str = "1-sqrt",
    ) -> None:
        self.peak_lr = _check_real("peak_lr", peak_lr, 0.0)
        self.total_steps = _check_total_steps(total_steps)
        self.warmup = warmup
        self.warmup_steps = _resolve_steps("warmup", warmup, self.total_steps)
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(
                f"Argument `decay_shape` must be one of {DECAY_SHAPES}. Received: decay_shape={decay_shape!r}"
            )
        self.decay_shape = decay_shape
        self.start_fraction = _check_real("start_fraction", start_fraction, 0.0, 1.0)
        self.final_fraction = _check_real("final_fraction", final_fraction, 0.0, 1.0)

    def __call__(self, step: Any) -> Any:
        step = _as_step(step)
        warm = self.ramp(step, self.warmup_steps, self.start_fraction)
        return ops.where(step < self.warmup_steps, warm, self.after_warmup(step))

    def after_warmup(self, step: Any) -> Any:
        """The learning rate at (float) `step`, wherever the warmup is over."""
        raise NotImplementedError

    def ramp(self, local: Any, steps: Any, start_fraction: Any) -> Any:
        """Linear from `start_fraction * peak_lr` (at `local` 0) towards `peak_lr` (at `steps`)."""
        # max(steps, 1): with no warmup the value is never selected, but must not be inf/nan.
        return self.peak_lr * (start_fraction + (1.0 - start_fraction) * local / ops.maximum(steps, 1.0))

    def decayed(self, progress: Any) -> Any:
        """From `peak_lr` (progress 0) to `final_fraction * peak_lr` (progress 1) along
        f(p) of `decay_shape`: 1 - p, (1 + cos(pi p)) / 2 or 1 - sqrt(p)."""
        if self.decay_shape == "linear":
            factor = 1.0 - progress
        elif self.decay_shape == "cosine":
            factor = 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            factor = 1.0 - ops.sqrt(progress)
        return self.peak_lr * (self.final_fraction + (1.0 - self.final_fraction) * factor)

    def get_config(self) -> dict[str, Any]:
        arguments = list(inspect.signature(type(self).__init__).parameters)[1:]  # all but self
        return {name: getattr(self, name) for name in arguments}


@keras.saving.register_keras_serializable(package="theseus")
class WSD(Schedule):
    """Warmup-stable-decay: linear warmup, constant `peak_lr`, then a decay over the last steps.

    At step s (0-based), with W warmup steps, D decay steps and T total steps:
    s < W: `peak_lr * (start_fraction + (1 - start_fraction) * s / W)`;
    W <= s < T - D: `peak_lr`;
    s >= T - D: `peak_lr * (final_fraction + (1 - final_fraction) * f(p))`, p = (s - (T - D)) / D
    clipped to [0, 1], f(p) = 1 - p ("linear"), (1 + cos(pi p)) / 2 ("cosine") or 1 - sqrt(p) ("1-sqrt").

    Args:
        peak_lr: learning rate of the stable phase.
        total_steps: number of optimizer steps in the run.
        warmup: warmup length, a fraction of `total_steps` (float in [0, 1]) or steps (int).
        decay: decay length, a fraction of `total_steps` (float in [0, 1]) or steps (int).
        decay_shape: one of "linear", "cosine", "1-sqrt" (Hägele et al.'s best).
        start_fraction: learning rate at step 0, as a fraction of `peak_lr`.
        final_fraction: learning rate at the end of the decay, as a fraction of `peak_lr`.
    """

    # like WSDS's: each schedule's own arguments are its public, serialised config (`get_config`)
    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup: FractionOrSteps = 0.01,
        decay: FractionOrSteps = 0.2,
        decay_shape: str = "1-sqrt",
        start_fraction: float = 0.0,
        final_fraction: float = 0.0,
    ) -> None:
        super().__init__(peak_lr, total_steps, warmup, start_fraction, final_fraction, decay_shape)
        self.decay = decay
        self.decay_steps = _resolve_steps("decay", decay, self.total_steps)
        _check_phases_fit(self.total_steps, warmup=(warmup, self.warmup_steps), decay=(decay, self.decay_steps))

    def after_warmup(self, step: Any) -> Any:
        decay_start = self.total_steps - self.decay_steps
        progress = ops.clip((step - decay_start) / max(self.decay_steps, 1), 0.0, 1.0)
        return ops.where(step < decay_start, self.peak_lr, self.decayed(progress))


@keras.saving.register_keras_serializable(package="theseus")
class Cosine(Schedule):
    """Linear warmup, then a half-cosine from `peak_lr` down to `final_fraction * peak_lr` at `total_steps`.

    After W warmup steps: `peak_lr * (final_fraction + (1 - final_fraction) * (1 + cos(pi p)) / 2)`,
    p = (s - W) / (T - W) clipped to [0, 1]. The warmup is WSD's.

    Args:
        peak_lr: learning rate at the end of warmup.
        total_steps: number of optimizer steps in the run.
        warmup: warmup length, a fraction of `total_steps` (float in [0, 1]) or steps (int).
        start_fraction: learning rate at step 0, as a fraction of `peak_lr`.
        final_fraction: learning rate at `total_steps`, as a fraction of `peak_lr`.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup: FractionOrSteps = 0.01,
        start_fraction: float = 0.0,
        final_fraction: float = 0.1,
    ) -> None:
        super().__init__(peak_lr, total_steps, warmup, start_fraction, final_fraction, decay_shape="cosine")
        _check_phases_fit(self.total_steps, warmup=(warmup, self.warmup_steps))

    def after_warmup(self, step: Any) -> Any:
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        return self.decayed(ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0))


@keras.saving.register_keras_serializable(package="theseus")
class Constant(Schedule):
    """`peak_lr` throughout, after an optional linear warmup (WSD's).

    Args:
        peak_lr: the learning rate.
        total_steps: number of optimizer steps in the run; only resolves a fractional `warmup`.
        warmup: warmup length, a fraction of `total_steps` (float in [0, 1]) or steps (int).
        start_fraction: learning rate at step 0, as a fraction of `peak_lr`.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int = 1,
        warmup: FractionOrSteps = 0,
        start_fraction: float = 0.0,
    ) -> None:
        super().__init__(peak_lr, total_steps, warmup, start_fraction)
        _check_phases_fit(self.total_steps, warmup=(warmup, self.warmup_steps))

    def after_warmup(self, step: Any) -> Any:
        return ops.full_like(step, self.peak_lr)


@keras.saving.register_keras_serializable(package="theseus")
class WSDS(Schedule):
    """WSD-S: warmup-stable-decay cycles within one run (MiniCPM's WSD-S, levanter's cycles).

    The run is cut at `cycles` (the steps where each cycle ends; `total_steps` closes the
    last one). Each cycle holds `peak_lr` and decays over its last `decay` steps (a fraction
    of the cycle's length, or steps) with `decay_shape` to `final_fraction * peak_lr`; the next
    cycle re-warms linearly from there to `peak_lr` over `rewarmup` steps. The first cycle
    warms up from `start_fraction * peak_lr` over `warmup` steps (of `total_steps`), like WSD.
    Every cycle's end is then a finished, decayed model.

    Args:
        peak_lr, total_steps, warmup, decay_shape, start_fraction, final_fraction: as for `WSD`.
        cycles: increasing cycle ends, each a fraction of `total_steps` (float in (0, 1)) or a step (int).
        decay: decay length of each cycle, a fraction of that cycle (float in [0, 1]) or steps (int).
        rewarmup: re-warm length at the start of each later cycle (fraction of the cycle, or steps).
    """

    # like WSD's: each schedule's own arguments are its public, serialised config (`get_config`)
    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        cycles: list[FractionOrSteps] = (0.5,),
        warmup: FractionOrSteps = 0.01,
        decay: FractionOrSteps = 0.2,
        rewarmup: FractionOrSteps = 0,
        decay_shape: str = "1-sqrt",
        start_fraction: float = 0.0,
        final_fraction: float = 0.0,
    ) -> None:
        super().__init__(peak_lr, total_steps, warmup, start_fraction, final_fraction, decay_shape)
        self.cycles, self.decay, self.rewarmup = list(cycles), decay, rewarmup
        ends = [_resolve_steps("cycles", c, self.total_steps) for c in self.cycles]
        if ends and ends[-1] == self.total_steps:
            ends = ends[:-1]
        if any(b <= a for a, b in zip([0] + ends, ends + [self.total_steps])):
            raise ValueError(
                f"Argument `cycles` must increase strictly inside (0, total_steps={self.total_steps}). "
                f"Received: cycles={self.cycles!r}"
            )
        self.ends = ends + [self.total_steps]
        self.starts = [0] + ends
        self.decay_steps, self.rewarmup_steps = [], []
        for index, (start, end) in enumerate(zip(self.starts, self.ends)):
            length = end - start
            d = _resolve_steps("decay", decay, length)
            w = self.warmup_steps if index == 0 else _resolve_steps("rewarmup", rewarmup, length)
            _check_phases_fit(length, warmup=(warmup if index == 0 else rewarmup, w), decay=(decay, d))
            self.decay_steps.append(d)
            self.rewarmup_steps.append(w)

    def __call__(self, step: Any) -> Any:
        """Each step in its own cycle: that cycle's (re)warmup, then WSD's stable and decay phases."""
        step = _as_step(step)
        inner_ends = ops.convert_to_tensor(self.ends[:-1] or [self.total_steps + 1], "float32")
        index = ops.sum(ops.cast(ops.expand_dims(step, -1) >= inner_ends, "int32"), axis=-1)  # cycle of each step
        index = ops.minimum(index, len(self.ends) - 1)

        def pick(values: list[float]) -> Any:
            return ops.take(ops.convert_to_tensor(values, "float32"), index)

        start, end = pick(self.starts), pick(self.ends)
        decay_steps, warm_steps = pick(self.decay_steps), pick(self.rewarmup_steps)
        warm_from = pick([self.start_fraction] + [self.final_fraction] * (len(self.ends) - 1))
        local = step - start
        decay_start = end - decay_steps
        progress = ops.clip((step - decay_start) / ops.maximum(decay_steps, 1.0), 0.0, 1.0)
        stable_or_decay = ops.where(step < decay_start, self.peak_lr, self.decayed(progress))
        return ops.where(local < warm_steps, self.ramp(local, warm_steps, warm_from), stable_or_decay)


# ---------------------------------------------------------------------------- registry

SCHEDULES: dict[str, Callable[..., LearningRateSchedule]] = {
    "wsd": WSD,
    "wsd-s": WSDS,
    "cosine": Cosine,
    "constant": Constant,
}


def build_schedule(
    schedule: str | LearningRateSchedule | Callable[..., LearningRateSchedule],
    *,
    peak_lr: float,
    total_steps: int,
    **kwargs: Any,
) -> LearningRateSchedule:
    """The schedule `schedule` names, built for a run of `total_steps` peaking at `peak_lr`.

    Args:
        schedule: a name from `SCHEDULES`; a `LearningRateSchedule`, returned unchanged; or a
            factory called like the classes in `SCHEDULES` (e.g. a `LearningRateSchedule` subclass).
        peak_lr: peak learning rate.
        total_steps: number of optimizer steps in the run.
        **kwargs: further arguments (`warmup`, `decay`, `decay_shape`, `final_fraction`, ...).
            Only those the factory accepts are passed, so a trainer can hand the same
            options to any schedule: `Cosine` simply ignores `decay`.
    """
    if isinstance(schedule, LearningRateSchedule):
        return schedule
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {schedule!r}. Known schedules: {sorted(SCHEDULES)}")
        factory = SCHEDULES[schedule]
    elif callable(schedule):
        factory = schedule
    else:
        raise TypeError(
            "Argument `schedule` must be a name, a `LearningRateSchedule` or a callable "
            f"returning one. Received: schedule={schedule!r}"
        )
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {name: value for name, value in kwargs.items() if name in parameters}
    built = factory(peak_lr=peak_lr, total_steps=total_steps, **kwargs)
    if not isinstance(built, LearningRateSchedule):
        raise TypeError(f"Schedule factory {factory!r} returned {built!r}, not a `LearningRateSchedule`.")
    return built
