import json
import shutil

import keras
import numpy as np
import pytest

from theseus.base import run as runs
from theseus.config import ConfigError
from theseus.experiments.gpt import PretrainGPT
from theseus.training import checkpoint as ckpt

TINY = {
    "architecture/n_layer": 1, "architecture/n_embd": 32, "architecture/n_head": 2, "architecture/block_size": 32,
    "training/batch_size": 4, "training/tokens": 4 * 32 * 12, "logging/validation_interval": 6,
    "logging/validation_batches": 2, "logging/checkpoint_interval": 4, "logging/log_interval": 2,
    "logging/progress_bar": False, "logging/keep_checkpoints": 0,
}


def train(run_dir, **overrides):
    fields, values = runs.configure("gpt/train/pretrain", {**TINY, **overrides}, require=True)
    runs.prepare_run_dir(run_dir, "gpt/train/pretrain", fields, values)
    job = PretrainGPT(values, run_dir)
    result = job.run()
    return job, result


def weights(run_dir, step):
    fields, values = runs.configure("gpt/train/pretrain", TINY, require=True)
    job = PretrainGPT(values)
    model = job.build_model()
    job.compile(model, job.build_schedule())
    ckpt.restore(ckpt.Checkpoint(ckpt.step_dir(run_dir / "checkpoints", step), step), model)
    return [np.array(w) for w in model.get_weights()] + [np.array(v) for v in model.optimizer.variables]


def rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    job, result = train(whole)
    assert job.total_steps == 12
    assert [c.step for c in ckpt.complete(whole / "checkpoints")] == [4, 8, 12]
    assert result["val_loss"] < result["initial_val_loss"]

    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    for step in (8, 12):  # as if the run died just after its step-4 checkpoint
        shutil.rmtree(ckpt.step_dir(resumed / "checkpoints", step))
    train(resumed)
    for a, b in zip(weights(whole, 12), weights(resumed, 12)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # metrics after the resume point are those of the uninterrupted run, once each
    a, b = rows(whole), rows(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "val_loss", "lr"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra, rb)


def test_a_corrupt_newest_checkpoint_is_skipped(tmp_path, caplog):
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build((None, 3))
    root = tmp_path / "checkpoints"
    ckpt.save(root, model, {"step": 1})
    newest = ckpt.save(root, model, {"step": 2})
    data = (newest.path / ckpt.MODEL_FILE).read_bytes()
    (newest.path / ckpt.MODEL_FILE).write_bytes(data[: len(data) // 2])
    assert ckpt.latest(root).step == 1
    assert "does not match its manifest" in caplog.text
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore(newest, model)


def test_too_few_tokens_for_one_step_is_a_config_error():
    _, values = runs.configure("gpt/train/pretrain", {**TINY, "training/tokens": 10}, require=True)
    with pytest.raises(ConfigError, match="training/tokens=10 is less than one step"):
        PretrainGPT(values)
