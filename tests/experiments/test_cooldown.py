"""WSD cooldown branches and the token-budget sweep, on a tiny GPT run."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from theseus.config import ConfigError
from theseus.experiments import runs
from theseus.experiments.cooldown import branch_name, cooldown, parse_point, sweep
from theseus.training import checkpoint as ckpt

PARENT = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * 40,
    "optimization/lr": 3e-3,
    "optimization/warmup": 4,
    "optimization/decay": 8,
    "optimization/final_lr_fraction": 0.1,
    "logging/validation_interval": 5,
    "logging/validation_batches": 2,
    "logging/checkpoint_interval": 5,
    "logging/log_interval": 1,
    "logging/keep_checkpoints": 0,
    "logging/progress_bar": False,
    "logging/plot": False,
    "topology/devices": 1,
}
TOKENS_PER_STEP = 4 * 32


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "parent"
    fields, values = runs.configure("gpt/train/pretrain", PARENT, require=True)
    runs.launch("gpt/train/pretrain", fields, values, run_dir.parent, run_dir.name)
    return run_dir


def rows(run_dir):
    return [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_branch_points_parse_steps_and_tokens():
    assert parse_point("20", 128) == 20
    assert parse_point("2560t", 128) == 20
    assert parse_point("2.56k", 128) == 20
    with pytest.raises(ConfigError, match="not a whole number of steps"):
        parse_point("1000t", 128)
    with pytest.raises(ConfigError, match="a step is a whole number"):
        parse_point("2.5", 128)


@pytest.mark.slow
def test_branch_decays_from_the_stable_value_and_ends_lower(parent):
    result = cooldown(parent, "20", fraction=0.25, shape="1-sqrt", name="branch-20")
    branch = parent.parent / "branch-20"
    assert json.loads((branch / "branch.json").read_text())["parent"] == str(parent.resolve())
    assert result["decay_steps"] == 5  # 0.25 of the 20 steps so far
    logged = {r["step"]: r["lr"] for r in rows(branch) if "lr" in r and r["step"] > 20}
    assert sorted(logged) == [21, 22, 23, 24, 25]
    peak, final = 3e-3, 0.1
    for step, lr in logged.items():  # the update of step k uses the schedule at k - 1
        p = (step - 1 - 20) / 5
        assert lr == pytest.approx(peak * (final + (1 - final) * (1 - math.sqrt(p))), rel=1e-5), step
    assert logged[21] == pytest.approx(peak, rel=1e-6)  # the parent's stable value at the branch point
    parent_lr = {r["step"]: r["lr"] for r in rows(parent) if "lr" in r}
    assert parent_lr[21] == pytest.approx(logged[21], rel=1e-6)
    from theseus.training.schedules import WSD

    schedule = WSD(peak, 25, warmup=4, decay=5, decay_shape="1-sqrt", final_fraction=final)
    assert float(schedule(25)) == pytest.approx(peak * final, rel=1e-6)  # ends at the final fraction
    parent_val = next(r["val_loss"] for r in rows(parent) if r["step"] == 20 and "val_loss" in r)
    assert result["val_loss"] < parent_val


@pytest.mark.slow
def test_branching_outside_the_stable_phase_lists_the_points(parent):
    with pytest.raises(
        ConfigError, match=r"step 35 is inside the decay phase.*stable-phase checkpoints: 5, 10, 15, 20, 25, 30"
    ):
        cooldown(parent, 35)
    with pytest.raises(ConfigError, match=r"there is no checkpoint at step 7.*5, 10, 15"):
        cooldown(parent, 7)
    assert not list(parent.parent.glob("parent-cooldown-35*"))


@pytest.mark.slow
def test_a_killed_branch_resumes_to_the_same_weights(parent, tmp_path):
    def command(name):
        return [
            sys.executable,
            "-m",
            "theseus.cli",
            "cooldown",
            str(parent),
            "--from",
            "30",
            "--steps",
            "8",
            "--shape",
            "linear",
            "--name",
            name,
            "logging.checkpoint_interval=1",
        ]

    subprocess.run(command("whole"), check=True, capture_output=True, timeout=600)
    killed = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = parent.parent / "killed" / "checkpoints" / "step_00000034"
    deadline = time.time() + 300
    while not target.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert target.exists() and not (parent.parent / "killed" / "checkpoints" / "step_00000038").exists()
    rerun = subprocess.run(command("killed"), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout

    import h5py

    def weights(name):
        with h5py.File(parent.parent / name / "checkpoints" / "step_00000038" / ckpt.MODEL_FILE) as f:
            arrays = {}
            f.visititems(
                lambda key, item: arrays.__setitem__(key, np.array(item)) if isinstance(item, h5py.Dataset) else None
            )
            return arrays

    whole, resumed = weights("whole"), weights("killed")
    assert whole.keys() == resumed.keys() and len(whole) > 10
    for key in whole:
        np.testing.assert_allclose(resumed[key], whole[key], atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_sweep_writes_a_falling_scaling_curve(parent):
    result = sweep(parent, every=2, fraction=0.25)
    assert [r["branch_step"] for r in result] == [10, 20, 30]
    for r in result:
        assert r["val_loss"] < r["parent_val_loss"], r
    losses = [r["val_loss"] for r in result]
    assert losses == sorted(losses, reverse=True), losses
    assert (parent / "sweep.png").stat().st_size > 1000
    table = (parent / "sweep.md").read_text()
    assert table.count("\n") == 2 + len(result)
    assert "| 20 |" in table


@pytest.mark.slow
def test_a_hand_made_branch_and_a_sweep_live_side_by_side(parent):
    assert branch_name("RUN", 40, 10, "linear") == "RUN-cooldown-40-d10-linear"
    hand = cooldown(parent, "30", fraction=0.25)  # theseus cooldown RUN --from 30 --fraction 0.25
    swept = sweep(parent, every=3)  # then theseus sweep-cooldowns RUN (--fraction 0.2): branches at 15 and 30
    assert Path(hand["run_dir"]).name == "parent-cooldown-30-d8-1-sqrt"
    assert [Path(r["run_dir"]).name for r in swept] == ["parent-cooldown-15-d3-1-sqrt", "parent-cooldown-30-d6-1-sqrt"]
    both = sorted(parent.parent.glob("parent-cooldown-30-*"))
    assert [b.name for b in both] == ["parent-cooldown-30-d6-1-sqrt", "parent-cooldown-30-d8-1-sqrt"]
    assert [json.loads((b / "branch.json").read_text())["decay_steps"] for b in both] == [6, 8]
    assert all(ckpt.latest(b / "checkpoints").step == 30 + d for b, d in zip(both, [6, 8]))
    again = cooldown(parent, "30", steps=8)  # the same branch asked for again (here by length) resumes its folder
    assert again["run_dir"] == hand["run_dir"] and again["start_step"] == again["total_steps"] == 38
