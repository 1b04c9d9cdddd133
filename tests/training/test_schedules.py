"""Learning-rate schedules against closed forms computed here, independently, in float64."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from theseus.training.schedules import SCHEDULES, WSD, Constant, Cosine, build_schedule

T = 1000
PEAK = 3e-4


def tolerance(peak: float) -> dict:
    # float32 vs float64; the atol covers cancellation in 1 + cos(pi p) as p -> 1, where the
    # exact value is ~0 and float32 leaves ~1e-8 * peak behind.
    return dict(rtol=1e-6, atol=1e-6 * peak)


# ---------------------------------------------------------------- closed forms, by phase


def warmup_lr(s: float, P: float, W: int, start: float) -> float:
    return P * (start + (1 - start) * s / W)


def decay_shape(p: float, shape: str) -> float:
    return {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "1-sqrt": 1 - math.sqrt(p)}[shape]


def reference(
    name: str, s: float, P: float, T: int, W: int, D: int = 0, shape: str = "", start: float = 0.0, final: float = 0.0
) -> float:
    """The schedule `name` at step s, with warmup W and decay D already in steps."""
    if s < W:
        return warmup_lr(s, P, W, start)
    if name == "constant":
        return P
    if name == "cosine":
        p = min(max((s - W) / (T - W), 0.0), 1.0)
        return P * (final + (1 - final) * decay_shape(p, "cosine"))
    if D == 0 or s < T - D:
        return P
    p = min((s - (T - D)) / D, 1.0)
    return P * (final + (1 - final) * decay_shape(p, shape))


# (registry name, constructor kwargs, the same in steps for `reference`)
CASES = [
    *[
        ("wsd", dict(peak_lr=PEAK, total_steps=T, decay_shape=shape), dict(W=10, D=200, shape=shape))
        for shape in ("linear", "cosine", "1-sqrt")
    ],
    *[
        (
            "wsd",
            dict(
                peak_lr=PEAK,
                total_steps=T,
                warmup=50,
                decay=0.3,
                decay_shape=shape,
                start_fraction=0.1,
                final_fraction=0.05,
            ),
            dict(W=50, D=300, shape=shape, start=0.1, final=0.05),
        )
        for shape in ("linear", "cosine", "1-sqrt")
    ],
    ("wsd", dict(peak_lr=1.0, total_steps=T, warmup=0, decay=0), dict(W=0, D=0, shape="1-sqrt")),
    ("wsd", dict(peak_lr=1.0, total_steps=T, warmup=37, decay=0), dict(W=37, D=0, shape="1-sqrt")),
    (
        "wsd",
        dict(peak_lr=1.0, total_steps=T, warmup=0, decay=1.0, decay_shape="linear"),
        dict(W=0, D=T, shape="linear"),
    ),
    (
        "wsd",
        dict(peak_lr=2.0, total_steps=T, warmup=0.4, decay=0.6, decay_shape="cosine"),
        dict(W=400, D=600, shape="cosine"),
    ),
    ("wsd", dict(peak_lr=1.0, total_steps=7, warmup=2, decay=3, decay_shape="1-sqrt"), dict(W=2, D=3, shape="1-sqrt")),
    ("cosine", dict(peak_lr=PEAK, total_steps=T), dict(W=10, final=0.1)),
    (
        "cosine",
        dict(peak_lr=1.0, total_steps=T, warmup=0, start_fraction=0.2, final_fraction=0.0),
        dict(W=0, final=0.0),
    ),
    (
        "cosine",
        dict(peak_lr=1.0, total_steps=T, warmup=100, start_fraction=0.2, final_fraction=0.3),
        dict(W=100, start=0.2, final=0.3),
    ),
    ("constant", dict(peak_lr=PEAK), dict(W=0)),
    ("constant", dict(peak_lr=PEAK, total_steps=T, warmup=0.05, start_fraction=0.1), dict(W=50, start=0.1)),
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "peak_lr") for name, kwargs, _ in CASES]


def steps_of(kwargs: dict, in_steps: dict) -> list[int]:
    """Phase boundaries (0, W-1, W, T-D-1, T-D, T-D+D/2, T-1, T) and random steps, within [0, T]."""
    total, W = kwargs.get("total_steps", 1), in_steps["W"]
    D = in_steps.get("D", total - W)  # a cosine decays over everything after warmup
    boundaries = {0, W - 1, W, total - D - 1, total - D, total - D + D // 2, total - 1, total}
    random = np.random.default_rng(total + W + D).integers(0, total + 1, size=20)
    return sorted(s for s in boundaries | set(random.tolist()) if 0 <= s <= total)


def evaluate(schedule, steps) -> np.ndarray:
    return ops.convert_to_numpy(schedule(np.asarray(steps, "int32"))).astype("float64")


def expected(name: str, kwargs: dict, in_steps: dict, steps) -> np.ndarray:
    total = kwargs.get("total_steps", 1)
    return np.array([reference(name, float(s), kwargs["peak_lr"], total, **in_steps) for s in steps])


# ------------------------------------------------------------------------------- values


@pytest.mark.parametrize("name,kwargs,in_steps", CASES, ids=IDS)
def test_values_match_closed_form(name, kwargs, in_steps):
    schedule = SCHEDULES[name](**kwargs)
    steps = steps_of(kwargs, in_steps)
    want = expected(name, kwargs, in_steps, steps)
    np.testing.assert_allclose(evaluate(schedule, steps), want, **tolerance(kwargs["peak_lr"]))


@pytest.mark.parametrize("name,kwargs,in_steps", CASES, ids=IDS)
def test_scalar_steps_match_array_steps(name, kwargs, in_steps):
    """The optimizer passes one scalar step (its `iterations` variable), not an array."""
    schedule = SCHEDULES[name](**kwargs)
    steps = steps_of(kwargs, in_steps)
    iterations = keras.optimizers.SGD().iterations  # the variable (and dtype) an optimizer passes
    scalars = []
    for step in steps:
        iterations.assign(step)
        scalars.append(float(ops.convert_to_numpy(schedule(iterations))))
    np.testing.assert_allclose(scalars, evaluate(schedule, steps), **tolerance(kwargs["peak_lr"]))


def test_wsd_phases_are_where_expected():
    schedule = WSD(peak_lr=1.0, total_steps=100, warmup=10, decay=20, decay_shape="linear", final_fraction=0.0)
    lr = evaluate(schedule, range(101))
    assert lr[0] == 0.0 and np.all(np.diff(lr[:11]) > 0)  # warmup rises from 0
    assert np.all(lr[10:81] == 1.0)  # stable at peak from W through T - D
    assert np.all(np.diff(lr[80:]) < 0) and lr[100] == 0.0  # decays to final at T


@pytest.mark.parametrize(
    "fractions,steps",
    [
        ((WSD, dict(warmup=0.01, decay=0.2)), dict(warmup=10, decay=200)),
        ((WSD, dict(warmup=0.0, decay=1.0)), dict(warmup=0, decay=T)),
        ((Cosine, dict(warmup=0.05)), dict(warmup=50)),
        ((Constant, dict(warmup=0.1)), dict(warmup=100)),
    ],
)
def test_fraction_and_steps_give_the_same_schedule(fractions, steps):
    cls, fraction_kwargs = fractions
    by_fraction = cls(peak_lr=1.0, total_steps=T, **fraction_kwargs)
    by_steps = cls(peak_lr=1.0, total_steps=T, **steps)
    assert by_fraction.warmup_steps == steps["warmup"]
    np.testing.assert_array_equal(evaluate(by_fraction, range(T + 1)), evaluate(by_steps, range(T + 1)))


def test_the_type_decides_fraction_or_steps():
    assert WSD(1.0, T, warmup=1, decay=0).warmup_steps == 1  # an int is steps, even 1
    assert WSD(1.0, T, warmup=1.0, decay=0).warmup_steps == T  # a float is a fraction
    assert WSD(1.0, T, warmup=np.int64(5), decay=np.float32(0.5)).decay_steps == T // 2
    rounded = WSD(1.0, 999, warmup=0.01, decay=0.2)  # 9.99 and 199.8 steps: nearest, not truncated
    assert (rounded.warmup_steps, rounded.decay_steps) == (10, 200)


# ------------------------------------------------------------------------ serialization


@pytest.mark.parametrize("name,kwargs,in_steps", CASES, ids=IDS)
def test_config_round_trip(name, kwargs, in_steps):
    schedule = SCHEDULES[name](**kwargs)
    config = schedule.get_config()
    assert set(config) == set(inspect.signature(type(schedule)).parameters)  # every constructor argument
    restored = type(schedule).from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    steps = steps_of(kwargs, in_steps)
    np.testing.assert_array_equal(evaluate(restored, steps), evaluate(schedule, steps))


@pytest.mark.parametrize("cls", [WSD, Cosine, Constant])
def test_keras_serialization(cls):
    schedule = cls(peak_lr=1e-3, total_steps=500, warmup=25)
    serialized = keras.saving.serialize_keras_object(schedule)
    assert serialized["registered_name"] == f"theseus>{cls.__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(restored) is cls and restored.get_config() == schedule.get_config()
    np.testing.assert_array_equal(evaluate(restored, range(0, 501, 7)), evaluate(schedule, range(0, 501, 7)))


def test_schedule_survives_optimizer_serialization():
    """What `model.save` does with a compiled optimizer's learning rate."""
    schedule = WSD(peak_lr=1e-3, total_steps=500, warmup=25, decay=100, decay_shape="cosine")
    config = keras.optimizers.serialize(keras.optimizers.AdamW(learning_rate=schedule))
    restored = keras.optimizers.deserialize(json.loads(json.dumps(config)))
    assert isinstance(restored._learning_rate, WSD)
    assert restored._learning_rate.get_config() == schedule.get_config()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "cls,kwargs,argument",
    [
        (WSD, dict(peak_lr=-1.0), "peak_lr"),
        (WSD, dict(peak_lr="1e-3"), "peak_lr"),
        (WSD, dict(total_steps=0), "total_steps"),
        (WSD, dict(total_steps=10.0), "total_steps"),
        (WSD, dict(warmup=1.5), "warmup"),
        (WSD, dict(warmup=-3), "warmup"),
        (WSD, dict(warmup=True), "warmup"),
        (WSD, dict(decay=-0.1), "decay"),
        (WSD, dict(decay="0.2"), "decay"),
        (WSD, dict(decay_shape="exponential"), "decay_shape"),
        (WSD, dict(start_fraction=1.5), "start_fraction"),
        (WSD, dict(final_fraction=-0.1), "final_fraction"),
        (WSD, dict(warmup=0.5, decay=0.6), "decay"),
        (WSD, dict(warmup=600, decay=401), "warmup"),
        (Cosine, dict(warmup=T + 1), "warmup"),
        (Cosine, dict(final_fraction=2.0), "final_fraction"),
        (Constant, dict(warmup=2), "warmup"),  # more than its default total_steps=1
        (Constant, dict(start_fraction=-1.0), "start_fraction"),
    ],
)
def test_bad_arguments_name_the_argument(cls, kwargs, argument):
    arguments = {"peak_lr": 1e-3, "total_steps": T, **kwargs} if cls is not Constant else {"peak_lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}`") as error:
        cls(**arguments)
    assert f"{argument}=" in str(error.value)  # Keras style: "Received: name=value"


def test_bad_decay_shape_lists_the_shapes():
    with pytest.raises(ValueError, match=r"'linear', 'cosine', '1-sqrt'.*Received: decay_shape='exp'"):
        WSD(1e-3, T, decay_shape="exp")


# --------------------------------------------------------------------------- registry


def test_build_schedule_by_name_passes_only_accepted_kwargs():
    options = dict(warmup=10, decay=0.3, decay_shape="linear", final_fraction=0.2)
    wsd = build_schedule("wsd", peak_lr=1e-3, total_steps=100, **options)
    cosine = build_schedule("cosine", peak_lr=1e-3, total_steps=100, **options)
    constant = build_schedule("constant", peak_lr=1e-3, total_steps=100, **options)
    assert type(wsd) is WSD
    assert (wsd.warmup_steps, wsd.decay_steps, wsd.decay_shape, wsd.final_fraction) == (10, 30, "linear", 0.2)
    assert cosine.get_config() == Cosine(1e-3, 100, warmup=10, final_fraction=0.2).get_config()
    assert constant.get_config() == Constant(1e-3, 100, warmup=10).get_config()


def test_build_schedule_returns_a_schedule_unchanged():
    schedule = Cosine(1e-3, 100)
    assert build_schedule(schedule, peak_lr=1.0, total_steps=5, decay=0.5) is schedule


def test_build_schedule_calls_a_factory_with_what_it_accepts():
    def short_warmup(peak_lr, total_steps, warmup):
        return Constant(peak_lr, total_steps, warmup=warmup)

    seen = {}

    def anything(**kwargs):
        seen.update(kwargs)
        return Constant(kwargs["peak_lr"])

    assert build_schedule(short_warmup, peak_lr=2.0, total_steps=10, warmup=3, decay=0.5).warmup_steps == 3
    build_schedule(anything, peak_lr=2.0, total_steps=10, warmup=3, decay=0.5)
    assert seen == dict(peak_lr=2.0, total_steps=10, warmup=3, decay=0.5)


def test_build_schedule_rejects_unknown_names_and_non_schedules():
    with pytest.raises(ValueError, match=r"'linear-decay'.*\['constant', 'cosine', 'wsd', 'wsd-s'\]"):
        build_schedule("linear-decay", peak_lr=1e-3, total_steps=10)
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        build_schedule(lambda peak_lr, total_steps: peak_lr, peak_lr=1e-3, total_steps=10)
    with pytest.raises(TypeError, match="schedule=3"):
        build_schedule(3, peak_lr=1e-3, total_steps=10)


# ------------------------------------------------------------------ driving an optimizer


def test_schedule_drives_adamw():
    """optimizer.learning_rate after N updates is schedule(N), and update k used schedule(k)."""
    P, total, wd = 0.1, 12, 0.5
    schedule = WSD(peak_lr=P, total_steps=total, warmup=3, decay=4, decay_shape="linear", start_fraction=0.2)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=wd)
    variable = keras.Variable(np.ones(3, "float32"))
    lrs = [reference("wsd", s, P, total, W=3, D=4, shape="linear", start=0.2) for s in range(total + 2)]
    for n in range(1, total + 2):
        # A zero gradient leaves only the decoupled weight decay: v *= 1 - lr * wd.
        optimizer.apply_gradients([(ops.zeros(3, "float32"), variable)])
        assert int(optimizer.iterations) == n
        lr = float(ops.convert_to_numpy(optimizer.learning_rate))
        np.testing.assert_allclose(lr, lrs[n], **tolerance(P))
        np.testing.assert_allclose(ops.convert_to_numpy(variable), np.prod([1 - wd * x for x in lrs[:n]]), rtol=1e-5)


# ------------------------------------------------------------------------ every backend


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_other_backends_agree_with_jax(backend):
    """Each schedule evaluated in a fresh `KERAS_BACKEND=backend` process equals the in-process (JAX) values."""
    program = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import keras, test_schedules as t\n"
        "assert keras.backend.backend() == sys.argv[2], keras.backend.backend()\n"
        "print(json.dumps([t.evaluate(t.SCHEDULES[n](**k), t.steps_of(k, s)).tolist() for n, k, s in t.CASES]))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", program, str(Path(__file__).parent), backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(theirs) == len(CASES)
    for (name, kwargs, in_steps), values in zip(CASES, theirs):
        ours = evaluate(SCHEDULES[name](**kwargs), steps_of(kwargs, in_steps))
        np.testing.assert_allclose(values, ours, err_msg=f"{backend} {name} {kwargs}", **tolerance(kwargs["peak_lr"]))


# ------------------------------------------------------------------------------ WSD-S


def wsds_reference(
    s: float, P: float, cycles: list[tuple[int, int, int, int]], start: float, final: float, shape: str
) -> float:
    """WSD-S by hand: `cycles` lists (start, end, warm steps, decay steps) per cycle."""
    for index, (a, b, warm, dec) in enumerate(cycles):  # noqa: B007 (the cycle found is used after the loop)
        if s < b or index == len(cycles) - 1:
            break
    warm_from = start if index == 0 else final
    if s - a < warm:
        return P * (warm_from + (1 - warm_from) * (s - a) / warm)
    if s < b - dec:
        return P
    p = min(max((s - (b - dec)) / max(dec, 1), 0.0), 1.0)
    return P * (final + (1 - final) * decay_shape(p, shape))


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsds_cycles_match_closed_form(shape):
    from theseus.training.schedules import WSDS

    schedule = WSDS(
        2e-3,
        100,
        cycles=[0.4, 70],
        warmup=10,
        decay=0.25,
        rewarmup=5,
        decay_shape=shape,
        start_fraction=0.1,
        final_fraction=0.05,
    )
    # cycle lengths 40, 30, 30: decay round(0.25 * len) = 10, 8 (7.5 rounds to even 8), 8
    layout = [(0, 40, 10, 10), (40, 70, 5, 8), (70, 100, 5, 8)]
    steps = [0, 9, 10, 29, 30, 35, 39, 40, 44, 45, 61, 62, 66, 69, 70, 74, 75, 91, 92, 99, 100]
    got = evaluate(schedule, steps)
    want = [wsds_reference(s, 2e-3, layout, 0.1, 0.05, shape) for s in steps]
    np.testing.assert_allclose(got, want, **tolerance(2e-3))
    # each cycle ends decayed, and the next one starts from there
    assert got[steps.index(40)] == pytest.approx(2e-3 * 0.05, rel=1e-5)


def test_wsds_with_one_cycle_is_wsd():
    from theseus.training.schedules import WSDS

    one = WSDS(1e-3, 50, cycles=[], warmup=5, decay=0.3, decay_shape="cosine")
    np.testing.assert_allclose(
        evaluate(one, range(51)),
        evaluate(WSD(1e-3, 50, warmup=5, decay=15, decay_shape="cosine"), range(51)),
        **tolerance(1e-3),
    )
    assert WSDS.from_config(one.get_config()).get_config() == one.get_config()


def test_wsds_rejects_cycles_out_of_order():
    from theseus.training.schedules import WSDS

    with pytest.raises(ValueError, match="`cycles` must increase strictly"):
        WSDS(1e-3, 50, cycles=[30, 20])
