import json
import os
import signal

import keras
import numpy as np
import pytest

from theseus.training.callbacks import (
    COLUMNS,
    LearningRate,
    NonFiniteLoss,
    Signals,
    StepCallback,
    StopOnNonFinite,
    Throughput,
    append_row,
    read_rows,
    truncate_metrics,
)
from theseus.training.schedules import WSD


def test_rows_go_to_jsonl_and_csv_and_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (0, 2, 4, 6):
        append_row(path, {"step": step, "tokens": step * 8, "loss": 1.0 / (step + 1)})
    with open(path, "a") as f:
        f.write('{"step": 8, "tok')  # a process killed in the middle of a row
    assert [r["step"] for r in read_rows(path)] == [0, 2, 4, 6]
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(COLUMNS) and len(csv_lines) == 5

    truncate_metrics(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 2, 4]
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(COLUMNS)
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["0", "2", "4"]
    assert csv_lines[2].split(",")[:3] == ["2", "16", str(1.0 / 3)]


class Recorder(StepCallback):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = []

    def on_step_end(self, step, logs):
        self.steps.append(step)


def test_step_callbacks_count_optimizer_steps_from_the_resume_point():
    recorder = Recorder(start_step=10, micro_steps=4)
    for batch in range(12):
        recorder.on_train_batch_end(batch, {})
    assert recorder.steps == [11, 12, 13]


@pytest.mark.parametrize(
    "schedule",
    [
        WSD(peak_lr=1e-3, total_steps=20, warmup=3, decay=5),  # elementwise: evaluated once, on all steps
        keras.optimizers.schedules.CosineDecay(1e-3, 20, warmup_target=2e-3, warmup_steps=3),  # one step at a time
    ],
    ids=["wsd", "keras-cosine-with-warmup"],
)
def test_the_learning_rate_of_each_step_goes_into_the_logs(schedule):
    callback = LearningRate(schedule, start_step=8, total_steps=20, micro_steps=2)
    callback.on_train_begin()
    for batch in range(24):
        logs = {}
        callback.on_train_batch_end(batch, logs)
        expected = float(keras.ops.convert_to_numpy(schedule(8 + batch // 2)))
        assert logs["lr"] == pytest.approx(expected, rel=1e-6)


def test_a_non_finite_loss_names_its_optimizer_step():
    guard = StopOnNonFinite(start_step=10, micro_steps=4)
    guard.on_train_batch_end(5, {"loss": 2.0})
    with pytest.raises(NonFiniteLoss, match="the loss is inf at step 12"):
        guard.on_train_batch_end(5, {"loss": np.float32("inf")})


def test_throughput_is_reported_from_the_first_batch_on():
    throughput = Throughput(
        tokens_per_batch=100, window=3, flops_per_token=6.0, peak_flops=1e6, measured_peak_flops=4e5
    )
    reported = []
    for batch in range(5):
        logs = {"loss": 1.0}
        throughput.on_train_batch_begin(batch)
        throughput.on_train_batch_end(batch, logs)
        reported.append(logs)
        assert len(throughput.times) == (1 if batch < 2 else min(batch, 3))  # the compiling batch 0 leaves the window
    for logs in reported:
        assert logs["tokens_per_sec"] > 0
        assert logs["mfu"] == pytest.approx(logs["tokens_per_sec"] * 6.0 / 1e6)
        assert logs["mfu_measured"] == pytest.approx(logs["tokens_per_sec"] * 6.0 / 4e5)


def test_signals_are_recorded_while_inside_and_restored_after():
    # what the process had: Python's `default_int_handler` for SIGINT, or SIG_IGN when it was started
    # in the background (`nohup ... &`), which Python then leaves alone
    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with Signals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process outside the block
        assert signals.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == before  # a second SIGTERM acts as usual
        assert signal.getsignal(signal.SIGINT) not in (before_int, signal.default_int_handler)
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGINT) == before_int
