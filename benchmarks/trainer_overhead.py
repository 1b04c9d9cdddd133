"""What the training features cost, side by side in one process on the same machine.

    python benchmarks/trainer_overhead.py [--steps 30] [--repeats 2]

The default job's model (GPT, 4 layers, width 128, context 256, batch 16, byte vocabulary)
on random tokens, trained with `model.fit` and theseus's AdamW:
  (a) bare: no callbacks;
  (b) + the optimizer tracking its gradient and update norms (`theseus.training.norms`);
  (c) + the trainer's per-step callbacks (NaN guard, throughput, learning rate, a metrics
      row every 10 steps; validation and checkpoints are not per step and not included);
  (d) as (c), the batch as 4 micro-batches of 4 (gradient accumulation);
  (e) as (c), in bfloat16 (`mixed_bfloat16`).
Steady-state tokens/s over the steps after the first 5 (compile), all callbacks included,
the median of `--repeats` rounds (each round runs every setup once, in turn); the time
(c)'s callbacks take per step, timed directly (other jobs on the machine move tokens/s far
more than they move this); and the time one checkpoint save takes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from theseus.model.models import GPT  # noqa: E402
from theseus.training import checkpoint as ckpt  # noqa: E402
from theseus.training.accumulation import PerOptimizerStep  # noqa: E402
from theseus.training.callbacks import LearningRate, MetricsLogger, StopOnNonFinite, Throughput  # noqa: E402
from theseus.training.norms import track_norms  # noqa: E402
from theseus.training.optimizers import build_optimizer  # noqa: E402
from theseus.training.schedules import WSD  # noqa: E402

WARMUP = 5  # optimizer steps excluded from the timing (compile, first steps)
BATCH, SEQ, VOCAB = 16, 256, 320


class Timed(keras.callbacks.Callback):
    """`inner`, with the time its batch-end hook takes recorded: a cost that other jobs
    on the machine barely disturb, unlike tokens/s."""

    def __init__(self, inner: keras.callbacks.Callback, spent: list):
        super().__init__()
        self.inner, self.spent = inner, spent

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def on_train_begin(self, logs=None):
        self.inner.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.inner.on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self.inner.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        start = time.perf_counter()
        self.inner.on_train_batch_end(batch, logs)
        self.spent.append(time.perf_counter() - start)


class WallClock(keras.callbacks.Callback):
    """Wall time from the end of optimizer step WARMUP to the end of the last step,
    measured after every other callback (it is placed last)."""

    def __init__(self, micro_steps: int):
        super().__init__()
        self.micro_steps, self.start, self.end = micro_steps, 0.0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # the step is done
        if batch + 1 == WARMUP * self.micro_steps:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def run(
    steps: int, norms: bool, callbacks: bool, micro_steps: int = 1, precision: str = "float32", save=None, spent=None
) -> float:
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    model = GPT(vocab_size=VOCAB, block_size=SEQ, n_layer=4, n_head=4, n_embd=128)
    model.build((None, SEQ))
    keras.config.set_dtype_policy("float32")
    schedule = WSD(2e-3, steps)
    optimizer = build_optimizer(
        "adamw",
        learning_rate=PerOptimizerStep(schedule, micro_steps) if micro_steps > 1 else schedule,
        gradient_accumulation_steps=micro_steps if micro_steps > 1 else None,
    )
    model.compile(optimizer=track_norms(optimizer) if norms else optimizer, jit_compile=True)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (steps * BATCH, SEQ + 1)).astype("int32")
    clock = WallClock(micro_steps)
    extra = []
    if callbacks:
        folder = tempfile.mkdtemp()
        extra = [
            StopOnNonFinite(0, micro_steps),
            Throughput(BATCH // micro_steps * SEQ, 10 * micro_steps),
            LearningRate(schedule, 0, steps, micro_steps),
            MetricsLogger(os.path.join(folder, "metrics.jsonl"), 10, BATCH * SEQ, 0, steps, micro_steps),
        ]
        if spent is not None:
            extra = [Timed(callback, spent) for callback in extra]
    model.fit(
        tokens[:, :-1],
        tokens[:, 1:],
        batch_size=BATCH // micro_steps,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[*extra, clock],
    )
    if save is not None:
        start = time.perf_counter()
        ckpt.save(tempfile.mkdtemp(), model, {"step": steps})
        save.append(time.perf_counter() - start)
    return (steps - WARMUP) * BATCH * SEQ / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    saves: list[float] = []
    spent: list[float] = []  # seconds in the callbacks' batch-end hooks, every hook of every batch
    setups = [
        ("(a) bare model.fit", dict(norms=False, callbacks=False)),
        ("(b) + gradient/update norms", dict(norms=True, callbacks=False)),
        ("(c) + per-step callbacks", dict(norms=True, callbacks=True, save=saves, spent=spent)),
        ("(d) (c), 4 micro-batches", dict(norms=True, callbacks=True, micro_steps=4)),
        ("(e) (c), bfloat16", dict(norms=True, callbacks=True, precision="bfloat16")),
    ]
    measured: dict[str, list[float]] = {name: [] for name, _ in setups}
    for _ in range(args.repeats):  # round-robin, so that a busy spell of the machine hits every setup alike
        for name, kw in setups:
            measured[name].append(run(args.steps, **kw))
    rates = {name: statistics.median(values) for name, values in measured.items()}
    bare = rates[setups[0][0]]
    print(f"{'setup':<32} {'tokens/s':>9} {'vs (a)':>7}")
    for name, rate in rates.items():
        print(f"{name:<32} {rate:>9,.0f} {rate / bare:>7.2f}")
    batches = args.steps * args.repeats
    print(f"(c)'s callbacks, per step: {1000 * sum(spent) / batches:.2f} ms on average")
    print(f"one checkpoint save (0.8M params + AdamW state): {1000 * statistics.median(saves):.0f} ms")


if __name__ == "__main__":
    main()
