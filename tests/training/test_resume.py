"""Runs that die and are run again, through the real command line, in subprocesses.

A run is killed (SIGKILL) at random steps and in the middle of writing a checkpoint, and
stopped by SIGTERM and SIGINT, one attempt after another; each time the same command is
run again. The run that finally completes must equal an uninterrupted one: the same
weights, optimizer state and RNG state, and the same metrics rows.
"""

import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from support import run_command
from test_checkpoint import weights_file

from theseus.experiments import runs
from theseus.training import checkpoint as ckpt

STEPS = 24
CONFIG = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "architecture/dropout": 0.1,  # so that the RNG state must be restored too
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * STEPS,
    "training/precision": "float32",
    "logging/checkpoint_interval": 4,
    "logging/log_interval": 2,
    "logging/validation_interval": 6,
    "logging/validation_batches": 2,
    "logging/keep_checkpoints": 2,
    "logging/progress_bar": False,
    "logging/peak_flops": 1e12,
    "logging/plot": False,
    "topology/devices": 1,
}
TIMING = {"tokens_per_sec", "mfu"}  # the only fields allowed to differ between runs


def write_config(path, config=CONFIG):
    fields, values = runs.configure("gpt/train/pretrain", config, require=True)
    path.write_text(runs.config_text("gpt/train/pretrain", fields, values))
    return path


KILL_AT = Path(__file__).with_name("kill_at.py")


def cli_run(config, out, kill_at=None):
    """`theseus run dev CONFIG OUT` in a subprocess; `kill_at` (SIGNAL@POINT): sending itself SIGNAL there."""
    command = [str(KILL_AT), kill_at] if kill_at else ["-m", "theseus.cli"]
    return run_command([sys.executable, *command, "run", "dev", str(config), str(out)])


def assert_same_checkpoint(a, b):
    wa, wb = weights_file(a.path), weights_file(b.path)
    assert sorted(wa) == sorted(wb) and len(wa) > 40  # weights and the optimizer's slots
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=1e-6, rtol=0, err_msg=key)
    sa, sb = a.state, b.state
    assert sa["rng"] == sb["rng"] and len(sa["rng"]) == 2  # two dropout layers' seed states
    assert sa["step"] == sb["step"] == STEPS


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_rows(reference, resumed):
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for a, b in zip(reference, resumed):
        assert set(a) == set(b), (a, b)
        for key in set(a) - TIMING:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a, b)


def kill_plan(rng):
    """Signals for one attempt after another, each later than the point the previous
    attempt's rerun resumes from: five SIGKILLs (before the first checkpoint, during a
    checkpoint write, at random steps, while writing the final checkpoint), a SIGTERM and
    a SIGINT."""
    a = rng.randint(1, 3)
    b = rng.choice([4, 8])
    c = rng.randint(b + 1, b + 5)
    d = rng.randint(c + 1, c + 6)
    e = rng.randint(d + 1, d + 3)
    f = rng.randint(e + 1, STEPS - 1)
    return [
        ("SIGKILL", f"step:{a}"),
        ("SIGKILL", f"checkpoint:{b}"),
        ("SIGTERM", f"step:{c}"),
        ("SIGKILL", f"step:{d}"),
        ("SIGINT", f"step:{e}"),
        ("SIGKILL", f"step:{f}"),
        ("SIGKILL", f"checkpoint:{STEPS}"),
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: (its config file, its run folder)."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "gpt.yaml")
    result = cli_run(config, root / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    return config, root / "runs" / "dev"


@pytest.mark.slow
def test_a_run_killed_again_and_again_ends_as_an_uninterrupted_run(tmp_path, reference):
    config, reference_dir = reference
    seed = int(os.environ.get("KILL_PLAN_SEED", random.randrange(2**32)))  # set it to replay a failure
    plan = kill_plan(random.Random(seed))
    context = f"kill plan {plan} (seed {seed})"
    out = tmp_path / "killed"
    run_dir = out / "dev"
    for name, point in plan:
        attempt = cli_run(config, out, kill_at=f"{name}@{point}")
        signum = signal.Signals[name]
        if signum == signal.SIGKILL:
            assert attempt.returncode == -signal.SIGKILL, (context, point, attempt.stderr[-3000:])
        else:  # SIGTERM and SIGINT: a checkpoint at that step, one line, exit 128 + signal
            step = int(point.split(":")[1])
            assert attempt.returncode == 128 + signum, (context, point, attempt.stderr[-3000:])
            assert attempt.stderr.strip().splitlines()[-1] == (
                f"theseus: training stopped by {name}; saved a checkpoint at step {step}: run the same command to resume"
            )
            assert ckpt.latest(run_dir / "checkpoints").step == step
        if point.startswith("checkpoint:"):  # killed between writing the checkpoint and publishing it
            step = int(point.split(":")[1])
            assert list((run_dir / "checkpoints").glob(f".tmp_step_{step:08d}_*")), context
            assert not ckpt.step_dir(run_dir / "checkpoints", step).exists(), context

    final = cli_run(config, out)
    assert final.returncode == 0, (context, final.stderr[-3000:])
    assert "resuming from" in final.stdout
    assert not list((run_dir / "checkpoints").glob(".tmp_*")), "a half-written checkpoint was left behind"
    assert_same_checkpoint(ckpt.latest(reference_dir / "checkpoints"), ckpt.latest(run_dir / "checkpoints"))
    assert_same_rows(rows(reference_dir), rows(run_dir))
