"""Training features as Keras callbacks, each one concern, counting optimizer steps.

A run resumed at step k calls `fit` on the remaining batches, and with gradient
accumulation `fit` sees `micro_steps` batches per optimizer step; so the step callbacks
(`StepCallback`) are told `start_step` and `micro_steps` and act once per update, on step
`start_step + (batch + 1) / micro_steps`: the number of optimizer updates done.

Keras calls callbacks in list order with one shared `logs` dict, and appends its progress
bar last; the trainer orders them so that each sees what the earlier ones added:
`StopOnNonFinite`, `Throughput`, `LearningRate`, `Validation`, `MetricsLogger`, `Checkpointer`,
`StopOnSignal`.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras

from theseus.base import multihost
from theseus.training import checkpoint as ckpt
from theseus.training.flops import flops_per_token as flops_per_token  # where the trainer reads it
from theseus.training.norms import NormTracking

COLUMNS = (
    "step",
    "tokens",
    "loss",
    "val_loss",
    "val_ppl",
    "lr",
    "grad_norm",
    "update_norm",
    "tokens_per_sec",
    "mfu",
    "mfu_measured",
)
"""The fields of a metrics row, in the CSV's column order."""


class TrainingStopped(RuntimeError):
    """Training ended early; `exit_code` is what the command line exits with."""

    exit_code = 1


class NonFiniteLoss(TrainingStopped):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


class DiskFull(TrainingStopped):
    """A write failed for lack of space (ENOSPC, EFBIG, EDQUOT); the checkpoints already
    written are intact, and the same command resumes from the last one once space is freed."""


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def out_of_space(error: BaseException) -> int | None:
    """The errno of `error` (or an error it was raised from) when it is a lack of space, else None.

    HDF5 (the weights file) may report its failed `write` as an OSError without `errno`,
    the number only in its message (`errno = 28`)."""
    while error is not None:
        if isinstance(error, OSError):
            number = error.errno
            found = re.search(r"errno = (\d+)", str(error)) if number is None else None
            number = int(found.group(1)) if found else number
            if number in NO_SPACE:
                return number
        error = error.__cause__ or error.__context__
    return None


def disk_full(error: BaseException, what: str, folder: Path, after: str = "") -> DiskFull | None:
    """A `DiskFull` saying that `what` could not be written into `folder`, the space left there
    and `after`; None when `error` is not a lack of space."""
    number = out_of_space(error)
    if number is None:
        return None
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free there"
    except OSError:
        free = "free space unknown"
    return DiskFull(
        f"training stopped: no room to write {what} in {folder} ({os.strerror(number)}; {free}){after}; "
        "free some space, then run the same command to resume"
    )


def _size(count: float) -> str:
    """A byte count in words (`812 bytes`, `3.4 GiB`)."""
    units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while count >= 1024 and len(units) > 1:
        count, units = count / 1024, units[1:]
    return f"{count:.0f} {units[0]}" if units[0] == "bytes" else f"{count:.1f} {units[0]}"


class Interrupted(TrainingStopped):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal"


class StepCallback(keras.callbacks.Callback):
    """A callback that acts once per optimizer step, in `on_step_end(step, logs)`."""

    def __init__(self, start_step: int = 0, total_steps: int | None = None, micro_steps: int = 1):
        super().__init__()
        self.start_step, self.total_steps, self.micro_steps = start_step, total_steps, micro_steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (batch + 1) % self.micro_steps == 0:
            self.on_step_end(self.start_step + (batch + 1) // self.micro_steps, logs if logs is not None else {})

    def on_step_end(self, step: int, logs: dict) -> None:
        raise NotImplementedError

    def is_last(self, step: int) -> bool:
        return step == self.total_steps


class StopOnNonFinite(keras.callbacks.Callback):
    """Raise `NonFiniteLoss` as soon as the loss is NaN or infinite.

    Raising (rather than Keras's `TerminateOnNaN`, which sets `stop_training`) skips every
    later callback, so neither this batch nor the end of training saves the broken state.
    """

    def __init__(self, start_step: int = 0, micro_steps: int = 1):
        super().__init__()
        self.start_step, self.micro_steps = start_step, micro_steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            step = self.start_step + batch // self.micro_steps + 1
            raise NonFiniteLoss(f"training stopped: the loss is {loss} at step {step}")


class Throughput(keras.callbacks.Callback):
    """Add `tokens_per_sec` (and `mfu`, `mfu_measured` when `flops_per_token` and the peaks are known) to the logs.

    Measured over the last `window` batches, from each batch's start to its end (which, with
    the logs read back, includes waiting for the device), so time spent in validation or
    checkpoints does not count. The first batch of a `fit` compiles: it is reported alone
    (a row right after a resume shows it) and left out of the window from the next batch on.
    MFU (model FLOPs utilisation) = `tokens_per_sec * flops_per_token / peak`: `mfu` against
    `peak_flops` (the devices' rated peak), `mfu_measured` against `measured_peak_flops` (a timed matmul).
    """

    def __init__(
        self,
        tokens_per_batch: int,
        window: int,
        flops_per_token: float = 0.0,
        peak_flops: float = 0.0,
        measured_peak_flops: float = 0.0,
    ):
        super().__init__()
        self.tokens_per_batch, self.flops_per_token = tokens_per_batch, flops_per_token
        self.peaks = {"mfu": peak_flops, "mfu_measured": measured_peak_flops}
        self.times: deque[float] = deque(maxlen=window)
        self._begin = 0.0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._begin = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        if batch == 1:
            self.times.clear()
        self.times.append(time.perf_counter() - self._begin)
        rate = len(self.times) * self.tokens_per_batch / max(sum(self.times), 1e-9)
        logs["tokens_per_sec"] = rate
        for name, peak in self.peaks.items():
            if self.flops_per_token and peak:
                logs[name] = rate * self.flops_per_token / peak


def measure_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls on the default device: the achievable
    peak that `mfu_measured` is measured against (and `mfu`, where no rated peak is known)."""
    a = keras.random.normal((size, size), dtype=dtype, seed=0)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a)[0, 0])  # compile and warm up
    fastest = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a)[0, 0])
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * size**3 / fastest


class LearningRate(keras.callbacks.Callback):
    """Add `lr`, the learning rate of the step's update, to every batch's logs (for the
    progress bar and the metrics rows); the micro-batches of a step share it.

    The schedule is evaluated once, on all the run's remaining steps together: called step
    by step, its eager ops took about 2 ms a batch on CPU, several percent of a small model's
    step on an accelerator. theseus's schedules are elementwise; one that takes a single step
    only (Keras's `CosineDecay` with warmup branches with `ops.cond`) is called once per step.
    """

    def __init__(self, schedule: Callable[[Any], Any], start_step: int, total_steps: int, micro_steps: int = 1):
        super().__init__()
        self.schedule, self.start_step, self.total_steps, self.micro_steps = (
            schedule,
            start_step,
            total_steps,
            micro_steps,
        )
        self.rates: dict[int, float] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        steps = range(self.start_step, self.total_steps)
        try:
            rates = keras.ops.convert_to_numpy(self.schedule(keras.ops.arange(steps.start, steps.stop)))
        except (TypeError, ValueError, RuntimeError):  # a schedule of one step at a time
            return
        if rates.shape == (len(steps),):
            self.rates = dict(zip(steps, rates.astype(float).tolist()))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs is not None:
            step = self.start_step + batch // self.micro_steps
            if step not in self.rates:
                self.rates[step] = float(keras.ops.convert_to_numpy(self.schedule(step)))
            logs["lr"] = self.rates[step]


def _reset_metrics_keeping(model: keras.Model, run: Callable[[], Any]) -> Any:
    """Run `run()` (e.g. `model.evaluate`) without disturbing the training metrics' state."""
    saved = [keras.ops.copy(v.value) for v in model.metrics_variables]
    try:
        return run()
    finally:
        for variable, value in zip(model.metrics_variables, saved):
            variable.assign(value)


class Validation(StepCallback):
    """Evaluate on a fixed held-out set every `interval` steps and at the end.

    Adds `val_loss` and `val_ppl` to the step's logs, so the progress bar, the metrics
    logger and the checkpointer (placed after it) see them.
    """

    def __init__(self, data, interval: int, start_step: int, total_steps: int, micro_steps: int = 1):
        super().__init__(start_step, total_steps, micro_steps)
        self.data, self.interval = data, interval
        self.last: dict[str, float] | None = None

    def on_step_end(self, step: int, logs: dict) -> None:
        if not (step % self.interval == 0 or self.is_last(step)):
            return
        model = self.model
        result = _reset_metrics_keeping(model, lambda: model.evaluate(self.data, verbose=0, return_dict=True))
        loss = float(result["loss"])
        self.last = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        self.last.update({f"val_{k}": float(v) for k, v in result.items() if k != "loss"})  # compiled metrics
        logs.update(self.last)


def compiled_metrics(model: keras.Model) -> list[str]:
    """The names of the metrics `model` was compiled with (`compile(metrics=[...])`, e.g. DPO's rewards)."""
    return [metric.name for tracker in model.metrics for metric in getattr(tracker, "metrics", ())]


class MetricsLogger(StepCallback):
    """Append one row per logged step to `metrics.jsonl` and `metrics.csv` (see `COLUMNS`).

    Training rows (every `interval` steps) hold `loss` (the mean over the steps since the
    last row: the loss tracker is reset after each row), `lr`, the optimizer's `grad_norm`
    and `update_norm` (when it tracks them, see `theseus.training.norms`), `tokens_per_sec`,
    `mfu` and `mfu_measured` (see `Throughput`), and the model's compiled metrics (`compiled_metrics`;
    e.g. DPO's `reward_accuracy`);
    validation rows add `val_loss`, `val_ppl` and `val_` + each compiled metric. `loss_state`, the tracker's
    sums saved in a checkpoint, is put back when a resumed `fit` begins, so the first row
    after a resume averages the same steps as in an uninterrupted run.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        interval: int,
        tokens_per_step: int,
        start_step: int,
        total_steps: int,
        micro_steps: int = 1,
        loss_state: Sequence[float] | None = None,
        sinks: Sequence[Callable[[dict], None]] = (),
    ):
        super().__init__(start_step, total_steps, micro_steps)
        self.path = Path(path)
        self.interval, self.tokens_per_step = interval, tokens_per_step
        self.loss_state, self.sinks = loss_state, list(sinks)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.loss_state is not None:  # `fit` has just reset the metrics
            for variable, value in zip(self.model.metrics_variables, self.loss_state):
                variable.assign(value)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        optimizer = self.model.optimizer
        if isinstance(optimizer, NormTracking) and keras.backend.backend() == "torch" and not self.model.jit_compile:
            optimizer.measuring = self.logs_step(self.start_step + batch // self.micro_steps + 1)

    def logs_step(self, step: int) -> bool:
        return step % self.interval == 0 or self.is_last(step)

    def on_step_end(self, step: int, logs: dict) -> None:
        row: dict[str, Any] = {}
        if self.logs_step(step):
            row["loss"] = float(logs["loss"])
            row.update(
                {
                    k: float(logs[k])
                    for k in ("lr", "tokens_per_sec", "mfu", "mfu_measured", *compiled_metrics(self.model))
                    if k in logs
                }
            )
            optimizer = self.model.optimizer
            if isinstance(optimizer, NormTracking):
                row["grad_norm"] = float(keras.ops.convert_to_numpy(optimizer.gradient_norm.value))
                row["update_norm"] = float(keras.ops.convert_to_numpy(optimizer.update_norm.value))
            if not self.is_last(step):  # the next row's loss covers only its own steps
                self.model.reset_metrics()
        row.update({k: float(v) for k, v in logs.items() if k.startswith("val_")})  # val_loss, val_ppl, val_<metric>
        if row:
            self.write({"step": step, "tokens": step * self.tokens_per_step, **row})

    def write(self, row: dict[str, Any]) -> None:
        if not multihost.is_primary():  # multi-host: process 0 alone writes the run folder
            return
        try:
            append_row(self.path, row)
        except OSError as error:
            stop = disk_full(error, f"the metrics of step {row['step']}", self.path.parent)
            if stop is None:
                raise
            raise stop from None
        for sink in self.sinks:
            sink(row)


class TensorBoardWriter:
    """A metrics-row sink: every number of a row as a TensorBoard scalar at the row's step.

    Keras's own `TensorBoard` callback counts batches from 0 in every `fit`, so a resumed
    run would start its curves over; rows carry the optimizer step. Needs TensorFlow and
    the `tensorboard` package; writes event files under `log_dir`, offline.
    """

    def __init__(self, log_dir: str | os.PathLike):
        import tensorflow as tf

        self.summary = tf.summary
        self.writer = tf.summary.create_file_writer(str(log_dir))

    def __call__(self, row: dict[str, Any]) -> None:
        with self.writer.as_default(step=row["step"]):
            for key, value in row.items():
                if key != "step":
                    self.summary.scalar(key, value)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _csv_path(jsonl: Path) -> Path:
    return jsonl.with_suffix(".csv")


def _csv_line(row: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([row.get(column, "") for column in COLUMNS])
    return out.getvalue()


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append `row` to the JSONL file `path` and to the CSV beside it (header first)."""
    path = Path(path)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = _csv_path(path)
    header = "" if csv_path.is_file() else _csv_line(dict(zip(COLUMNS, COLUMNS)))
    with open(csv_path, "a") as f:
        f.write(header + _csv_line(row))


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`; a last line torn by a killed process is left out."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Keep only the rows up to `step` (a run that died after its last checkpoint wrote more)."""
    from theseus.config import write_atomic

    path = Path(path)
    if not path.is_file() or not multihost.is_primary():
        return
    kept = [row for row in read_rows(path) if row["step"] <= step]
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
    write_atomic(_csv_path(path), "".join(_csv_line(row) for row in [dict(zip(COLUMNS, COLUMNS)), *kept]))


class Checkpointer(StepCallback):
    """Save a checkpoint every `interval` steps, whenever the validation loss is the best
    so far, and at the end of training (also when a signal stopped it).

    Args:
        root: the run's `checkpoints/` folder.
        state: extra fields for `state.json` (e.g. the data seed), besides step and tokens.
        keep: how many recent checkpoints to keep (0 = all); the best one is kept as well.
        keep_every: checkpoints at multiples of this step are kept too (0: none; None: for a
            WSD schedule, about 10 through its stable phase, `checkpoint.automatic_keep_every`).
        files: extra text files for every checkpoint (the run's `config.yaml`).
        best_val_loss: the lowest validation loss of the checkpoints already saved.
    """

    # starts as MetricsLogger's: both are step callbacks writing at an interval, with their own options
    def __init__(
        self,
        root: str | os.PathLike,
        interval: int,
        tokens_per_step: int,
        start_step: int,
        total_steps: int,
        micro_steps: int = 1,
        state: dict[str, Any] | None = None,
        keep: int = 3,
        files: dict[str, str] | None = None,
        best_val_loss: float = math.inf,
        save_weights: Any | None = None,
        keep_every: int | None = 0,
    ):
        super().__init__(start_step, total_steps, micro_steps)
        self.save_weights, self.keep_every = save_weights, keep_every  # save_weights None = model.save_weights
        self.root = Path(root)
        self.interval, self.tokens_per_step = interval, tokens_per_step
        self.state, self.keep, self.files = dict(state or {}), keep, dict(files or {})
        self.best_val_loss = best_val_loss
        self.step = self.saved_step = start_step
        self.val_loss: float | None = None

    def on_step_end(self, step: int, logs: dict) -> None:
        self.step = step
        self.val_loss = float(logs["val_loss"]) if "val_loss" in logs else None
        if step % self.interval == 0 or (self.val_loss is not None and self.val_loss < self.best_val_loss):
            self.save()

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.keep_every is None:  # Keras holds the schedule in `_learning_rate` (`learning_rate` is its value)
            self.keep_every = ckpt.automatic_keep_every(self.model.optimizer._learning_rate, self.interval)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.step != self.saved_step:
            self.save()

    def save(self) -> ckpt.Checkpoint:
        model = self.model
        if not all(bool(keras.ops.all(keras.ops.isfinite(w.value))) for w in model.trainable_weights):
            raise NonFiniteLoss(f"training stopped: the weights are not finite after step {self.step}")
        state = {
            **self.state,
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "loss_state": [float(keras.ops.convert_to_numpy(v.value)) for v in model.metrics_variables],
        }
        if self.val_loss is not None:
            state["val_loss"] = self.val_loss
            self.best_val_loss = min(self.best_val_loss, self.val_loss)
        try:
            checkpoint = ckpt.save(
                self.root,
                model,
                state,
                keep=self.keep,
                files=self.files,
                save_weights=self.save_weights,
                keep_every=self.keep_every or 0,
            )
        except OSError as error:
            if out_of_space(error) is None:
                raise
            good = ckpt.latest(self.root)
            where = f"the last good checkpoint is {good.path}" if good else "no checkpoint was saved"
            raise disk_full(error, f"the checkpoint of step {self.step}", self.root, f"; {where}") from None
        self.saved_step = self.step
        return checkpoint


class Signals:
    """While entered, SIGTERM and SIGINT are recorded in `received` instead of ending the
    process; a second one of the same kind acts as it normally would (a forced quit).
    Outside the main thread, where Python cannot handle signals, it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, self._previous[signum])
        name = signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this step with a checkpoint ({name} again to quit now)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class StopOnSignal(StepCallback):
    """End training after the step during which `signals` received SIGTERM or SIGINT
    (the checkpointer then saves it, in `on_train_end`)."""

    def __init__(self, signals: Signals, start_step: int = 0, micro_steps: int = 1):
        super().__init__(start_step, micro_steps=micro_steps)
        self.signals = signals

    def on_step_end(self, step: int, logs: dict) -> None:
        if self.signals.received is not None:
            self.model.stop_training = True
