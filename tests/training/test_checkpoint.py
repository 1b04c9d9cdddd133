import json
import re
import shutil
import sys

import h5py
import keras
import numpy as np
import pytest
from support import run_command

from theseus.experiments import runs
from theseus.training import checkpoint as ckpt


def tiny_model(dropout=0.0):
    model = keras.Sequential([keras.layers.Dense(4), keras.layers.Dropout(dropout), keras.layers.Dense(2)])
    model.build((None, 3))
    model.compile(optimizer="adam", loss="mse")
    return model


def test_a_corrupt_newest_checkpoint_is_skipped(tmp_path, caplog):
    model = tiny_model()
    root = tmp_path / "checkpoints"
    ckpt.save(root, model, {"step": 1})
    newest = ckpt.save(root, model, {"step": 2})
    data = (newest.path / ckpt.MODEL_FILE).read_bytes()
    (newest.path / ckpt.MODEL_FILE).write_bytes(data[: len(data) // 2])
    assert ckpt.latest(root).step == 1
    assert "does not match its manifest" in caplog.text
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore(newest, model)


def test_a_checkpoint_without_its_manifest_is_incomplete(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoint = ckpt.save(root, tiny_model(), {"step": 3})
    (checkpoint.path / ckpt.MANIFEST_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="no manifest.json"):
        ckpt.verify(checkpoint.path)
    assert ckpt.latest(root) is None


def test_keeps_the_newest_and_the_best(tmp_path):
    model = tiny_model()
    root = tmp_path / "checkpoints"
    for step, val_loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, 1.5)]:
        state = {"step": step, **({"val_loss": val_loss} if val_loss is not None else {})}
        ckpt.save(root, model, state, keep=2)
    assert [c.step for c in ckpt.complete(root)] == [2, 4, 5]
    assert (root / "latest").read_text().strip() == "step_00000005"
    assert (root / "best").read_text().strip() == "step_00000002"
    assert ckpt.best(root).step == 2 and ckpt.best_val_loss(root) == 1.0
    assert not list(root.glob(".tmp_*"))


def test_multiples_of_keep_every_outlive_the_pruning(tmp_path):
    model = tiny_model()
    root = tmp_path / "checkpoints"
    for step in range(1, 11):
        ckpt.save(root, model, {"step": step}, keep=2, keep_every=4)
    assert [c.step for c in ckpt.complete(root)] == [4, 8, 9, 10]


def test_keep_every_is_automatic_for_wsd_only():
    from theseus.training.accumulation import PerOptimizerStep
    from theseus.training.schedules import WSD, Cosine

    wsd = WSD(1e-3, 1000, warmup=10, decay=200)  # a stable phase of 790 steps: 10 points at most
    assert ckpt.automatic_keep_every(wsd, 20) == 80 and 790 // 80 == 9
    assert ckpt.automatic_keep_every(PerOptimizerStep(wsd, 4), 20) == 80
    assert ckpt.automatic_keep_every(WSD(1e-3, 100, warmup=0, decay=20), 50) == 50  # never below the interval
    assert ckpt.automatic_keep_every(Cosine(1e-3, 1000), 20) == 0


KEEP = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 16,
    "training/batch_size": 2,
    "training/tokens": 2 * 16 * 20,
    "optimization/warmup": 2,
    "optimization/decay": 4,
    "logging/checkpoint_interval": 1,
    "logging/validation_interval": 100,  # validated at the end only: the best checkpoint is the last
    "logging/validation_batches": 1,
    "logging/progress_bar": False,
    "logging/peak_flops": 1e12,
    "logging/plot": False,
    "topology/devices": 1,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule, kept",
    [("wsd", [2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 20]), ("cosine", [18, 19, 20])],
)
def test_a_wsd_run_keeps_checkpoints_through_its_stable_phase(schedule, kept, tmp_path):
    from theseus.experiments import JOBS

    PretrainGPT = JOBS["gpt/train/pretrain"]

    run_dir = tmp_path / "run"  # the default keep_checkpoints: 3 and keep_every: null (automatic)
    fields, values = runs.configure("gpt/train/pretrain", {**KEEP, "optimization/schedule": schedule}, require=True)
    runs.prepare_run_dir(run_dir, "gpt/train/pretrain", fields, values)
    PretrainGPT(values, run_dir).run()  # WSD: a stable phase of 14 steps, so every 2nd checkpoint stays
    assert [c.step for c in ckpt.complete(run_dir / "checkpoints")] == kept


def test_a_stale_temporary_folder_is_cleaned_on_the_next_save(tmp_path):
    root = tmp_path / "checkpoints"
    stale = root / ".tmp_step_00000007_12345"
    stale.mkdir(parents=True)
    (stale / ckpt.MODEL_FILE).write_bytes(b"half")
    ckpt.save(root, tiny_model(), {"step": 8})
    assert not stale.exists()
    assert [c.step for c in ckpt.complete(root)] == [8]


def test_broken_newer_checkpoints_are_set_aside(tmp_path):
    root = tmp_path / "checkpoints"
    model = tiny_model()
    for step in (4, 8, 12):
        ckpt.save(root, model, {"step": step}, keep=0)
    (ckpt.step_dir(root, 12) / ckpt.STATE_FILE).write_text("{}")
    assert ckpt.latest(root).step == 8
    moved = ckpt.set_aside_after(root, 8)
    assert [p.name for p in moved] == ["broken_step_00000012"]
    assert [c.step for c in ckpt.complete(root)] == [4, 8]


def test_the_rng_state_is_saved_and_restored(tmp_path):
    keras.utils.set_random_seed(1)
    model = tiny_model(dropout=0.5)
    x = np.ones((8, 3), "float32")
    model.fit(x, np.ones((8, 2), "float32"), batch_size=4, verbose=0)  # advances the dropout RNG
    checkpoint = ckpt.save(tmp_path, model, {"step": 2})
    (state,) = ckpt.rng_variables(model)
    saved = np.array(state)
    assert checkpoint.state["rng"] == [saved.tolist()]
    state.assign(np.zeros_like(saved))
    ckpt.restore(checkpoint, model)
    np.testing.assert_array_equal(np.array(state), saved)
    with pytest.raises(ckpt.CheckpointError, match="holds 1 RNG states, the model has 0"):
        ckpt.restore(checkpoint, tiny_model(dropout=0.0))


# ------------------------------------------------------------------ across backends

RESTORE_AND_CONTINUE = """
import sys
from pathlib import Path
import keras, numpy as np
import theseus
from theseus.experiments import runs

run_dir, dump = Path(sys.argv[1]), sys.argv[2]
key, fields, values = runs.read_config(run_dir / "config.yaml")
job = runs.job_class(key)(values, run_dir)
model = job.build_model()
job.compile(model, job.build_schedule())
state = job.folder.resume(model, job.tuning)
variables = [*model.variables, *model.optimizer.variables]
np.savez(dump, step=state["step"], paths=[v.path for v in variables],
         **{f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(variables)})
runs.launch(key, fields, values, run_dir.parent, run_dir.name)  # the same run, resumed and finished
"""

CROSS = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * 8,
    "logging/checkpoint_interval": 4,
    "logging/log_interval": 2,
    "logging/validation_interval": 4,
    "logging/validation_batches": 2,
    "logging/keep_checkpoints": 0,
    "logging/progress_bar": False,
    "logging/peak_flops": 1e12,
    "logging/plot": False,
    "topology/devices": 1,
}


def weights_file(checkpoint_path):
    """Every array a checkpoint's `.weights.h5` holds (weights and optimizer variables), by key."""
    found = {}
    with h5py.File(checkpoint_path / ckpt.MODEL_FILE, "r") as f:
        f.visititems(
            lambda key, item: found.__setitem__(key, np.array(item)) if isinstance(item, h5py.Dataset) else None
        )
    return found


def unnumbered(path):
    """`masked_adam_w_1/iteration` -> `masked_adam_w/iteration`: Keras numbers a second object of a kind."""
    first, _, rest = str(path).partition("/")
    return re.sub(r"_\d+$", "", first) + "/" + rest


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """A finished 8-step run written under JAX, and the state of its step-4 checkpoint as JAX loads it."""
    from theseus.experiments import JOBS

    PretrainGPT = JOBS["gpt/train/pretrain"]

    run_dir = tmp_path_factory.mktemp("jax") / "run"
    fields, values = runs.configure("gpt/train/pretrain", CROSS, require=True)
    runs.prepare_run_dir(run_dir, "gpt/train/pretrain", fields, values)
    PretrainGPT(values, run_dir).run()
    job = PretrainGPT(values)
    model = job.build_model()
    job.compile(model, job.build_schedule())
    ckpt.restore(ckpt.Checkpoint(ckpt.step_dir(run_dir / "checkpoints", 4), 4), model)
    variables = [*model.variables, *model.optimizer.variables]
    return run_dir, [v.path for v in variables], [keras.ops.convert_to_numpy(v.value) for v in variables]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_a_jax_checkpoint_resumes_training_under(backend, jax_run, tmp_path):
    source, paths, values = jax_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    shutil.rmtree(ckpt.step_dir(run_dir / "checkpoints", 8))  # as if the JAX run died after step 4
    script = tmp_path / "continue.py"
    script.write_text(RESTORE_AND_CONTINUE)
    result = run_command(
        [sys.executable, str(script), str(run_dir), str(tmp_path / "dump.npz")], env={"KERAS_BACKEND": backend}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dump = np.load(tmp_path / "dump.npz")
    # every weight, optimizer slot and the step counter, exactly as JAX has them
    assert int(dump["step"]) == 4
    assert [unnumbered(p) for p in dump["paths"]] == [unnumbered(p) for p in paths]
    for i, (path, value) in enumerate(zip(paths, values)):
        np.testing.assert_array_equal(dump[f"v{i}"], value, err_msg=path)
    assert f"resuming from {ckpt.step_dir(run_dir / 'checkpoints', 4)} (step 4)" in result.stdout
    assert ckpt.latest(run_dir / "checkpoints").step == 8
    # ... and the training it continues ends where JAX's own run ended. Backends sum in different
    # orders, and attention's key bias has a true gradient of zero (softmax ignores a shift),
    # which Adam normalises, so its rounding noise is magnified: 6e-7 apart after 4 steps here.
    ours = weights_file(ckpt.step_dir(run_dir / "checkpoints", 8))
    theirs = weights_file(ckpt.step_dir(source / "checkpoints", 8))
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5, rtol=0, err_msg=key)
    # and the losses it logs after the switch are the JAX run's, within 1e-4
    ours, theirs = logged_losses(run_dir, after_step=4), logged_losses(source, after_step=4)
    assert ours.keys() == theirs.keys() and len(ours) >= 3, (ours, theirs)
    for key in ours:
        assert abs(ours[key] - theirs[key]) <= 1e-4, (key, ours[key], theirs[key])


def logged_losses(run_dir, after_step):
    """{(step, "loss" or "val_loss"): value} of the metrics rows after `after_step`."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], k): r[k] for r in rows if r["step"] > after_step for k in ("loss", "val_loss") if k in r}
