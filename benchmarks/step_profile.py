"""Where a training step's time goes on PyTorch, op by op: theseus `fit` against nanoGPT's step.

    python benchmarks/step_profile.py [--layers 4 --d-model 128 --heads 4 --vocab 320] [--rows 20]

Trains the same GPT both ways on torch (theseus's `fit` as `throughput.py`'s row (a) runs it;
the nanoGPT-style model of `native.py`), profiles `--profiled` steps after the warm-up with
`torch.profiler`, and prints each aten op's self CPU time per step side by side, largest first,
with the number of calls per step: what theseus spends that a hand-written step does not. The
last rows are each step's wall time under the profiler and what of it lies outside aten ops
(Python: Keras's layer calls and optimizer loops, the callbacks). `--seq 8` makes the ops tiny,
so what remains is that fixed cost a step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import native  # noqa: E402
import throughput  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


class TimedProfile(profile):
    """`torch.profiler.profile` that also keeps the wall time from its start to its stop."""

    def start(self):
        self.started = time.perf_counter()
        super().start()

    def stop(self):
        super().stop()
        self.wall = time.perf_counter() - self.started


def profiled(run, steps: int, profiled_steps: int) -> dict[str, tuple[float, int]]:
    """op -> (self CPU ms, calls) per step over the last `profiled_steps` of `steps`, and
    `WALL`: (wall ms per step under the profiler, 0)."""
    profiler = TimedProfile(activities=[ProfilerActivity.CPU])
    start_at = steps - profiled_steps
    run(profiler, start_at)
    per_step = {WALL: (profiler.wall * 1e3 / profiled_steps, 0)}
    for event in profiler.key_averages():
        if event.key.startswith("aten::"):
            per_step[event.key] = (event.self_cpu_time_total / 1e3 / profiled_steps, event.count // profiled_steps)
    return per_step


WALL = "wall"


def run_theseus(args, x, y):
    def run(profiler, start_at):
        class Profile(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == start_at:
                    profiler.start()

            def on_train_end(self, logs=None):
                profiler.stop()

        fit = keras.Model.fit
        keras.Model.fit = lambda model, *a, callbacks=(), **k: fit(model, *a, callbacks=[Profile(), *callbacks], **k)
        try:
            throughput.run_theseus(args, x, y, jit_compile=False)
        finally:
            keras.Model.fit = fit

    return run


def run_native(args, x, y):
    def run(profiler, start_at):
        timed = native._timed

        def profiled_timed(run_step, steps, warmup):
            for i in range(steps):
                if i == start_at:
                    profiler.start()
                run_step(i)
            profiler.stop()
            return []

        native._timed = profiled_timed
        try:
            native.torch_step_times(x, y, args.layers, args.d_model, args.heads, args.vocab, 0)
        finally:
            native._timed = timed

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=320)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--profiled", type=int, default=6, help="steps profiled, at the end")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    args.model = "gpt"
    x, y = throughput.batches(args.steps, args.batch, args.seq, args.vocab)
    ours = profiled(run_theseus(args, x, y), args.steps, args.profiled)
    theirs = profiled(run_native(args, x, y), args.steps, args.profiled)
    print(
        f"\nGPT {args.layers} layers, d_model {args.d_model}, {args.heads} heads, seq {args.seq}, batch "
        f"{args.batch}, vocab {args.vocab}, torch eager; self CPU time per step, {args.profiled} steps profiled\n"
    )
    print("| op | theseus fit (ms) | calls | nanoGPT (ms) | calls |\n|---|---|---|---|---|")
    ops = sorted(
        (set(ours) | set(theirs)) - {WALL}, key=lambda op: -max(ours.get(op, (0, 0))[0], theirs.get(op, (0, 0))[0])
    )
    for op in ops[: args.rows]:
        (a, na), (b, nb) = ours.get(op, (0.0, 0)), theirs.get(op, (0.0, 0))
        print(f"| {op} | {a:.1f} | {na} | {b:.1f} | {nb} |")
    rest = [sum(t for op, (t, _) in table.items() if op not in {*ops[: args.rows], WALL}) for table in (ours, theirs)]
    total = [sum(t for op, (t, _) in table.items() if op != WALL) for table in (ours, theirs)]
    wall = [table[WALL][0] for table in (ours, theirs)]
    print(
        f"| the other ops | {rest[0]:.1f} | | {rest[1]:.1f} | |\n| **all aten ops** | {total[0]:.1f} | | {total[1]:.1f} | |"
    )
    outside = [w - t for w, t in zip(wall, total)]  # Python: Keras's layer calls, the optimizer's loops, callbacks
    print(
        f"| outside aten ops | {outside[0]:.1f} | | {outside[1]:.1f} | |\n| **wall** | {wall[0]:.1f} | | {wall[1]:.1f} | |"
    )


if __name__ == "__main__":
    main()
