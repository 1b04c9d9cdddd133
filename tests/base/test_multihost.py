"""A real multi-host run: two local processes (4 virtual CPU devices each) joined through
JAX's own runtime on 127.0.0.1 into one mesh of 8, against the same job in one process."""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from theseus.base import multihost
from theseus.base.mesh import Topology
from theseus.config import ConfigError
from theseus.experiments import JOBS, runs
from theseus.training import checkpoint as ckpt

PretrainGPT = JOBS["gpt/train/pretrain"]

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="multi-host runs need JAX")

JOB = "gpt/train/pretrain"
KILL_AT = Path(__file__).parents[1] / "training" / "kill_at.py"
TINY = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 4,
    "architecture/block_size": 32,
    "training/batch_size": 8,
    "training/tokens": 20 * 8 * 32,
    "optimization/lr": 3e-3,
    "optimization/warmup": 2,
    "logging/log_interval": 1,
    "logging/validation_interval": 10,
    "logging/validation_batches": 1,
    "logging/checkpoint_interval": 10,
    "logging/keep_checkpoints": 0,
    "logging/progress_bar": False,
    "logging/plot": False,
    "topology/strategy": "fsdp+tp",
    "topology/shard": 2,  # 4x2: the batch axis spans both processes
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, out_dir, name, *overrides, processes=2, kill=None):
    """Start `theseus run` as `processes` cooperating processes, 8 // processes devices each,
    each writing its output to `out_dir/NAME-I.K.log` (K: the K-th launch); `kill=(i, "SIGNAL@step:N")` runs process
    i through `kill_at.py`, which sends it SIGNAL after step N."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
    procs = []
    for i in range(processes):
        command = (
            [sys.executable, str(KILL_AT), kill[1]] if kill and kill[0] == i else [sys.executable, "-m", "theseus.cli"]
        )
        log = next(path for k in itertools.count() if not (path := Path(out_dir) / f"{name}-{i}.{k}.log").exists())
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            procs.append(
                subprocess.Popen(
                    [
                        *command,
                        "run",
                        name,
                        str(config),
                        str(out_dir),
                        f"topology.coordinator=127.0.0.1:{port}",
                        f"topology.num_processes={processes}",
                        f"topology.process_id={i}",
                        *overrides,
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    stdin=subprocess.DEVNULL,
                )
            )
        procs[-1].log = log
    return procs


def wait(procs, timeout=600) -> list[float]:
    """Wait for a launched job to end; when each process ended (time.monotonic())."""
    ended = [None] * len(procs)
    deadline = time.monotonic() + timeout
    try:
        while None in ended and time.monotonic() < deadline:
            for i, p in enumerate(procs):
                if ended[i] is None and p.poll() is not None:
                    ended[i] = time.monotonic()
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert None not in ended, [p.log.read_text()[-3000:] for p in procs]
    return ended


def finish(procs) -> None:
    """Wait for a launched job; every process must succeed."""
    wait(procs)
    for p in procs:
        assert p.returncode == 0, p.log.read_text()[-6000:]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def restored(run_dir, step):
    """The run's checkpoint at `step` restored in this single process, on one device."""
    values = runs.configure(
        JOB, {**TINY, "topology/strategy": "dp", "topology/shard": 1, "topology/devices": 1}, require=True
    )[1]
    job = PretrainGPT(values)
    model = job.build_model()
    job.compile(model, job.build_schedule())
    ckpt.restore(ckpt.Checkpoint(ckpt.step_dir(run_dir / "checkpoints", step), step), model)
    return model


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job's config file, and the job run to the end in this one process (same 4x2 mesh)."""
    tmp = tmp_path_factory.mktemp("multihost")
    fields, values = runs.configure(JOB, TINY, require=True)
    config = tmp / "gpt.yaml"
    config.write_text(runs.config_text(JOB, fields, values))
    reference = tmp / "one"
    runs.prepare_run_dir(reference, JOB, fields, values)
    PretrainGPT(values, reference).run()
    return config, reference


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoints_cross_topologies(job, tmp_path):
    config, reference = job
    want = rows(reference)

    # Two jobs of two processes each, side by side: (1) from scratch; (3) resuming the
    # one-process run's step-10 checkpoint, data parallel (a run may change its topology).
    resumed = tmp_path / "runs" / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(ckpt.step_dir(resumed / "checkpoints", 20))
    jobs = [
        launch(config, tmp_path / "runs", "two"),
        launch(config, tmp_path / "runs", "resumed", "topology.strategy=dp", "topology.shard=1"),
    ]
    for job in jobs:
        finish(job)

    # 1. From scratch in two processes: the losses of one, and process 0 alone writes.
    two = tmp_path / "runs" / "two"
    got = rows(two)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0] + list(range(1, 21))  # each row once
    np.testing.assert_allclose([r["loss"] for r in got[1:]], [r["loss"] for r in want[1:]], rtol=1e-4, atol=0)
    np.testing.assert_allclose(
        [r["val_loss"] for r in got if "val_loss" in r],
        [r["val_loss"] for r in want if "val_loss" in r],
        rtol=1e-4,
        atol=0,
    )
    assert sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_00000010",
        "step_00000020",
    ]
    assert (two / "config.yaml").is_file()

    # 2. Their checkpoint restores in one process, on one device, with the same logits.
    tokens = np.random.default_rng(0).integers(0, 320, (2, 32)).astype("int32")
    from_two = restored(two, 20)
    from_one = restored(reference, 20)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(from_two(tokens)), keras.ops.convert_to_numpy(from_one(tokens)), rtol=1e-4, atol=1e-5
    )
    for a, b in zip(from_two.optimizer.variables, from_one.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)

    # 3. And the other way: a checkpoint written by one process resumes in two.
    again = rows(resumed)
    assert [r["step"] for r in again] == [r["step"] for r in want]
    np.testing.assert_allclose([r["loss"] for r in again[11:]], [r["loss"] for r in want[11:]], rtol=1e-4, atol=0)


PEER_TIMEOUT = 10  # topology/peer_timeout for the test; the default is minutes


@pytest.mark.slow
def test_a_killed_process_ends_the_job_in_bounded_time_and_a_rerun_resumes_to_the_same_loss(job, tmp_path):
    config, reference = job
    want = rows(reference)
    out = tmp_path / "runs"
    # Two jobs side by side: one loses process 1 (a worker) after step 15, the other process 0
    # (the writer, which hosts JAX's coordination service). Checkpoint 10 is the last complete.
    timeout = f"topology.peer_timeout={PEER_TIMEOUT}"
    killed = {
        victim: launch(config, out, f"lost{victim}", timeout, kill=(victim, "SIGKILL@step:15")) for victim in (1, 0)
    }
    ended = {victim: wait(procs) for victim, procs in killed.items()}

    # A worker dies: process 0 stops within the timeout (plus one heartbeat), exit 1, one line.
    writer, worker = killed[1]
    assert worker.returncode == -signal.SIGKILL and writer.returncode == 1, writer.log.read_text()[-3000:]
    assert ended[1][0] - ended[1][1] < PEER_TIMEOUT + 15
    log = writer.log.read_text()
    assert log.rstrip().splitlines()[-1] == (
        f"theseus: process 1 of the multi-host job has not answered for {PEER_TIMEOUT} s (topology/peer_timeout): "
        "it died or its host is unreachable; stopping. Run all 2 processes again to resume from the last checkpoint"
    )
    assert "Traceback" not in log and "Check failure" not in log

    # The writer dies: JAX's runtime ends the worker at once, with JAX's own message.
    writer, worker = killed[0]
    assert writer.returncode == -signal.SIGKILL and worker.returncode != 0
    assert ended[0][1] - ended[0][0] < 15
    assert "another task died" in worker.log.read_text()

    for victim in (1, 0):
        checkpoints = out / f"lost{victim}" / "checkpoints"
        assert ckpt.step_dir(checkpoints, 10).is_dir() and not ckpt.step_dir(checkpoints, 20).exists()

    # Every process run again: both jobs resume from step 10 and end with the uninterrupted losses.
    again = {victim: launch(config, out, f"lost{victim}", timeout) for victim in (1, 0)}
    for procs in again.values():
        finish(procs)
    for victim, procs in again.items():
        assert "(step 10)" in procs[0].log.read_text()
        got = rows(out / f"lost{victim}")
        assert [r["step"] for r in got] == [r["step"] for r in want]
        np.testing.assert_allclose([r["loss"] for r in got[11:]], [r["loss"] for r in want[11:]], rtol=1e-4, atol=0)


def test_one_process_feeds_the_whole_batch():
    assert multihost.process_count() == 1 and multihost.is_primary()
    assert multihost.local_rows(8) == slice(0, 8)


def test_local_batches_are_the_given_rows_of_every_batch():
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            x = np.arange(8 * 2).reshape(8, 2) + 100 * index
            return x, -x

    local = multihost.LocalBatches(Batches(), slice(4, 8))
    assert len(local) == 3
    x, y = local[2]
    np.testing.assert_array_equal(x, np.arange(8, 16).reshape(4, 2) + 200)
    np.testing.assert_array_equal(y, -x)


def test_joining_is_checked_and_must_come_before_jax_starts(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "127.0.0.1:1234")  # as a launcher would set it
    with pytest.raises(
        ConfigError,
        match=r"topology/coordinator=127.0.0.1:1234 needs topology/num_processes and "
        r"topology/process_id \(or KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID\)",
    ):
        multihost.initialize(Topology())
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "first")
    with pytest.raises(
        ConfigError, match="environment variable KERAS_DISTRIBUTION_PROCESS_ID must be an integer, got 'first'"
    ):
        multihost.initialize(Topology())
    with pytest.raises(ConfigError, match=r"topology/process_id=2 must be in \[0, 2\)"):
        multihost.initialize(Topology(process_id=2))  # the config wins over the environment
    keras.distribution.list_devices()  # this process has started JAX: too late to join
    with pytest.raises(
        ConfigError,
        match=r"cannot join the multi-host job at 127.0.0.1:1234: jax.distributed.initialize\(\) "
        "must be called before any JAX calls",
    ):
        multihost.initialize(Topology(process_id=1))
