"""A real multi-host run: two local processes (4 virtual CPU devices each) joined through
JAX's own runtime on 127.0.0.1 into one mesh of 8, against the same job in one process."""

import json
import os
import shutil
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from theseus.base import multihost
from theseus.base.mesh import Topology
from theseus.config import ConfigError
from theseus.experiments import runs
from theseus.experiments.gpt import PretrainGPT
from theseus.training import checkpoint as ckpt

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="multi-host runs need JAX")

JOB = "gpt/train/pretrain"
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


def launch(config, out_dir, name, *overrides, processes=2):
    """Start `theseus run` as `processes` cooperating processes, 8 // processes devices each."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "theseus.cli",
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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for i in range(processes)
    ]


def finish(procs) -> None:
    """Wait for a launched job; every process must succeed."""
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-6000:]


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


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoints_cross_topologies(tmp_path):
    fields, values = runs.configure(JOB, TINY, require=True)
    config = tmp_path / "gpt.yaml"
    config.write_text(runs.config_text(JOB, fields, values))

    reference = tmp_path / "runs" / "one"  # the same job in this one process, same 4x2 mesh
    runs.prepare_run_dir(reference, JOB, fields, values)
    PretrainGPT(values, reference).run()
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
