"""Training features as Keras callbacks, each one concern, counting global steps.

A run resumed at step k calls `fit` on the remaining batches, so every callback is told
`start_step` and reports `start_step + batch + 1`: the number of optimizer updates done.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import keras

from theseus.training import checkpoint as ckpt


def _reset_metrics_keeping(model: keras.Model, run: Callable[[], Any]) -> Any:
    """Run `run()` (e.g. `model.evaluate`) without disturbing the training metrics' state."""
    saved = [keras.ops.copy(v.value) for v in model.metrics_variables]
    try:
        return run()
    finally:
        for variable, value in zip(model.metrics_variables, saved):
            variable.assign(value)


class Validation(keras.callbacks.Callback):
    """Evaluate on a fixed held-out set every `interval` steps and at the end.

    Adds `val_loss` and `val_ppl` to the batch's logs, so the progress bar and the
    metrics logger (placed after it) see them.
    """

    def __init__(self, data, interval: int, start_step: int, total_steps: int):
        super().__init__()
        self.data, self.interval = data, interval
        self.start_step, self.total_steps = start_step, total_steps
        self.last: Optional[dict[str, float]] = None

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        step = self.start_step + batch + 1
        if logs is None or not (step % self.interval == 0 or step == self.total_steps):
            return
        model = self.model
        result = _reset_metrics_keeping(model, lambda: model.evaluate(self.data, verbose=0, return_dict=True))
        loss = float(result["loss"])
        self.last = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        logs.update(self.last)


class MetricsLogger(keras.callbacks.Callback):
    """Append one JSON row per logged step to `metrics.jsonl`.

    Training rows (every `interval` steps) hold `step`, `tokens`, `loss` (the mean over
    the steps since the last row: the loss tracker is reset after each row), `lr` (the rate
    the step's update used) and `tokens_per_sec`; validation rows add `val_loss`, `val_ppl`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        interval: int,
        tokens_per_step: int,
        start_step: int,
        total_steps: int,
        schedule: Optional[Callable] = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.interval, self.tokens_per_step = interval, tokens_per_step
        self.start_step, self.total_steps = start_step, total_steps
        self.schedule = schedule
        self._last_time: Optional[float] = None
        self._last_step = start_step

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self._last_time = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        logs = logs or {}
        step = self.start_step + batch + 1
        row: dict[str, Any] = {}
        if step % self.interval == 0 or step == self.total_steps:
            now = time.perf_counter()
            row["loss"] = float(logs["loss"])
            if self.schedule is not None:
                row["lr"] = float(keras.ops.convert_to_numpy(self.schedule(step - 1)))
            row["tokens_per_sec"] = (step - self._last_step) * self.tokens_per_step / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, step
            if step < self.total_steps:  # the next row's loss covers only its own steps
                self.model.reset_metrics()
        for key in ("val_loss", "val_ppl"):
            if key in logs:
                row[key] = float(logs[key])
        if row:
            self.write({"step": step, "tokens": step * self.tokens_per_step, **row})

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Drop rows after `step` (written by a run that died after its last checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["step"] <= step]
    if len(kept) != len(rows):
        from theseus.config import write_atomic

        write_atomic(path, "".join(line + "\n" for line in kept))


class Checkpointer(keras.callbacks.Callback):
    """Save a checkpoint every `interval` steps and at the end of training.

    Args:
        root: the run's `checkpoints/` folder.
        state: extra fields for `state.json` (e.g. the data seed), besides step and tokens.
        keep: how many recent checkpoints to keep (0 = all).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        interval: int,
        tokens_per_step: int,
        start_step: int,
        total_steps: int,
        state: Optional[dict[str, Any]] = None,
        keep: int = 3,
    ):
        super().__init__()
        self.root = Path(root)
        self.interval, self.tokens_per_step = interval, tokens_per_step
        self.start_step, self.total_steps = start_step, total_steps
        self.state, self.keep = dict(state or {}), keep
        self.step = start_step
        self.saved_step = start_step

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        self.step = self.start_step + batch + 1
        if self.step % self.interval == 0:
            self.save()

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self.step != self.saved_step:
            self.save()

    def save(self) -> ckpt.Checkpoint:
        state = {**self.state, "step": self.step, "tokens": self.step * self.tokens_per_step}
        checkpoint = ckpt.save(self.root, self.model, state, keep=self.keep)
        self.saved_step = self.step
        return checkpoint
