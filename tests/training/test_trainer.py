import json
import math
import shutil

import keras
import numpy as np
import pytest

from theseus import cli
from theseus.config import ConfigError
from theseus.experiments import JOBS, runs
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import NonFiniteLoss, StepCallback, flops_per_token

PretrainGPT = JOBS["gpt/train/pretrain"]

TINY = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "architecture/dropout": 0.1,  # a resume must restore the dropout RNG too
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * 12,
    "logging/validation_interval": 6,
    "logging/validation_batches": 2,
    "logging/checkpoint_interval": 4,
    "logging/log_interval": 2,
    "logging/progress_bar": False,
    "logging/keep_checkpoints": 0,
    "logging/peak_flops": 1e12,
    "topology/devices": 1,
}


def job_for(run_dir=None, cls=PretrainGPT, key="gpt/train/pretrain", **overrides):
    fields, values = runs.configure(key, {**TINY, **overrides}, require=True)
    if run_dir is not None:
        runs.prepare_run_dir(run_dir, key, fields, values)
    return cls(values, run_dir)


def train(run_dir=None, **overrides):
    job = job_for(run_dir, **overrides)
    return job, job.run()


def restored(run_dir, step, **overrides):
    """A fresh model with the checkpoint of `step` loaded: its weights, optimizer and RNG variables."""
    job = job_for(**overrides)
    model = job.build_model()
    job.compile(model, job.build_schedule())
    ckpt.restore(ckpt.Checkpoint(ckpt.step_dir(run_dir / "checkpoints", step), step), model)
    return model


def state_of(model):
    return [np.array(v) for v in [*model.variables, *model.optimizer.variables]]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """One uninterrupted tiny run (12 steps, checkpoints every 4 and at each new best validation loss)."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    job, result = train(run_dir)
    return run_dir, job, result


@pytest.mark.slow
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, whole):
    run_dir, job, result = whole
    assert job.total_steps == 12
    assert result["val_loss"] < result["initial_val_loss"]
    kept = [c.step for c in ckpt.complete(run_dir / "checkpoints")]
    assert {4, 8, 12} <= set(kept) and set(kept) <= {4, 6, 8, 12}  # 6: only if its val loss was a new best

    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    for checkpoint in ckpt.complete(resumed / "checkpoints"):
        if checkpoint.step > 4:  # as if the run died just after its step-4 checkpoint
            shutil.rmtree(checkpoint.path)
    _, again = train(resumed)
    assert again["start_step"] == 4
    for a, b in zip(state_of(restored(run_dir, 12)), state_of(restored(resumed, 12))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    a, b = rows(run_dir), rows(resumed)  # after the resume point: the same rows, once each
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in set(ra) - {"tokens_per_sec", "mfu"}:
            assert rb[key] == pytest.approx(ra[key], rel=1e-6), (key, ra, rb)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, whole, caplog, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(whole[0], run_dir)
    *_, previous, newest = ckpt.complete(run_dir / "checkpoints")
    data = (newest.path / ckpt.MODEL_FILE).read_bytes()
    (newest.path / ckpt.MODEL_FILE).write_bytes(data[: len(data) // 2])  # as a full disk would leave it

    _, again = train(run_dir)
    assert again["start_step"] == previous.step
    assert f"skipping checkpoint: {newest.path}: {ckpt.MODEL_FILE} does not match its manifest" in caplog.text
    assert f"resuming from {previous.path} (step {previous.step})" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / f"broken_{newest.path.name}").is_dir()  # set aside, not deleted
    for a, b in zip(state_of(restored(whole[0], 12)), state_of(restored(run_dir, 12))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert [r["step"] for r in rows(run_dir)] == [r["step"] for r in rows(whole[0])]


@pytest.mark.slow
def test_metrics_rows_hold_every_field(whole):
    run_dir, job, _ = whole
    all_rows = rows(run_dir)
    assert all_rows[0] == {
        "step": 0,
        "tokens": 0,
        "val_loss": all_rows[0]["val_loss"],
        "val_ppl": all_rows[0]["val_ppl"],
    }
    train_rows = [r for r in all_rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    for row in train_rows:
        assert set(row) >= {"step", "tokens", "loss", "lr", "grad_norm", "update_norm", "tokens_per_sec", "mfu"}
        assert row["tokens"] == row["step"] * 4 * 32
        assert row["mfu"] == pytest.approx(
            row["tokens_per_sec"] * flops_per_token(job.model, job.values, job.config.block_size) / 1e12
        )
    assert [r["step"] for r in all_rows if "val_loss" in r] == [0, 6, 12]
    for row in all_rows:
        if "val_loss" in row:
            assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))
    schedule = job.build_schedule()
    assert [r["lr"] for r in train_rows] == pytest.approx([float(schedule(r["step"] - 1)) for r in train_rows])
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,tokens,loss,val_loss,val_ppl,lr,grad_norm,update_norm,tokens_per_sec,mfu,mfu_measured"
    assert [int(line.split(",")[0]) for line in csv_lines[1:]] == [r["step"] for r in all_rows]
    assert (run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_four_micro_batches_make_the_update_of_one_big_batch():
    # 3 optimizer steps of 16 sequences; a 2-step warmup, so a schedule that saw the
    # micro-batch counter would give different learning rates; clipping at 0.5 is active.
    # No dropout: four micro-batches draw other dropout masks than one batch of 16.
    common = dict(
        **{
            "training/batch_size": 16,
            "training/tokens": 16 * 32 * 3,
            "optimization/warmup": 2,
            "optimization/clip_norm": 0.5,
            "logging/validation_interval": 100,
            "architecture/dropout": 0.0,
        }
    )
    big, _ = train(**common)
    small, _ = train(**common, **{"training/micro_batch_size": 4})
    assert small.model.optimizer.gradient_accumulation_steps == 4
    assert int(small.model.optimizer.iterations) == int(big.model.optimizer.iterations) == 3
    for a, b in zip(big.model.get_weights(), small.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.array(small.model.optimizer.gradient_norm) == pytest.approx(
        np.array(big.model.optimizer.gradient_norm), rel=1e-5
    )


def test_micro_batch_size_must_divide_the_batch():
    with pytest.raises(ConfigError, match="training/micro_batch_size=3 must divide training/batch_size=4"):
        job_for(**{"training/micro_batch_size": 3})


class Poison(StepCallback):
    """Make one weight NaN after step `at`: the next step's loss is NaN."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at = at

    def on_step_end(self, step, logs):
        if step == self.at:
            weight = self.model.trainable_weights[0]
            weight.assign(np.full(weight.shape, np.nan, dtype="float32"))


class PoisonedGPT(PretrainGPT):
    """A GPT job whose weights turn NaN after step 5."""

    def extra_callbacks(self, start_step):
        return [Poison(5, start_step=start_step)]


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, whole, monkeypatch, capsys):
    monkeypatch.setitem(JOBS, "test/poisoned", PoisonedGPT)
    fields, values = runs.configure("test/poisoned", TINY, require=True)
    config = tmp_path / "poisoned.yaml"
    config.write_text(runs.config_text("test/poisoned", fields, values))

    code = cli.main(["run", "dev", str(config), str(tmp_path)])
    run_dir = tmp_path / "dev"
    good = ckpt.step_dir(run_dir / "checkpoints", 4)
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"theseus: training stopped: the loss is nan at step 6; the last good checkpoint is {good} "
        "(nothing after it was written)"
    )
    assert [c.step for c in ckpt.complete(run_dir / "checkpoints")] == [4]
    assert max(r["step"] for r in rows(run_dir)) == 4  # the row of step 6 was never written
    model = restored(run_dir, 4)
    assert all(np.isfinite(v).all() for v in state_of(model))
    for a, b in zip(state_of(model), state_of(restored(whole[0], 4))):  # the same as a healthy run's
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    job = job_for(tmp_path / "run")
    model = job.build_model()
    job.compile(model, job.build_schedule())
    model.trainable_weights[1].assign(np.full(model.trainable_weights[1].shape, np.inf, dtype="float32"))
    from theseus.training.callbacks import Checkpointer

    checkpointer = Checkpointer(tmp_path / "checkpoints", interval=1, tokens_per_step=128, start_step=0, total_steps=2)
    checkpointer.set_model(model)
    with pytest.raises(NonFiniteLoss, match="the weights are not finite after step 1"):
        checkpointer.on_train_batch_end(0, {"loss": 1.0})
    assert not list((tmp_path / "checkpoints").glob("step_*"))


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_with_float32_weights_and_loss():
    mixed, result = train(**{"training/precision": "bfloat16", "training/tokens": 4 * 32 * 4})
    model = mixed.model
    assert {v.dtype for v in model.trainable_variables} == {"float32"}  # master weights
    assert model.blocks[0].attn.compute_dtype == "bfloat16"
    tokens = np.arange(64, dtype="int32").reshape(2, 32)
    assert keras.ops.convert_to_numpy(model(tokens)).dtype == np.float32  # the loss sees float32 logits
    # The same initial weights in float32: bfloat16 keeps 8 significant bits, so the initial
    # validation loss differs, but by less than bfloat16's relative precision (2^-7).
    _, full = train(**{"training/precision": "float32", "training/tokens": 4 * 32 * 4})
    assert result["initial_val_loss"] != full["initial_val_loss"]
    assert result["initial_val_loss"] == pytest.approx(full["initial_val_loss"], rel=2**-7)
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < result["initial_val_loss"]


def one_step(**overrides):
    """The weights after one optimizer step from the same initial weights and batch."""
    job = job_for(**{"training/tokens": 4 * 32, "optimization/warmup": 0, **overrides})
    job.run()
    return {w.path: np.array(w) for w in job.model.trainable_weights}


@pytest.mark.slow
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_embeddings_get_weight_decay_only_when_asked(decay_embeddings):
    decayed = one_step(**{"optimization/weight_decay": 0.5, "optimization/decay_embeddings": decay_embeddings})
    plain = one_step(**{"optimization/weight_decay": 0.0})
    for path in ("gpt/wte/embeddings", "gpt/wpe/embeddings"):
        assert np.array_equal(decayed[path], plain[path]) != decay_embeddings, path
    for path in ("gpt/block_0/ln_1/gamma", "gpt/block_0/attn/query/bias"):  # never decayed
        np.testing.assert_array_equal(decayed[path], plain[path])
    assert not np.array_equal(decayed["gpt/block_0/mlp/up/kernel"], plain["gpt/block_0/mlp/up/kernel"])


def test_too_few_tokens_for_one_step_is_a_config_error():
    _, values = runs.configure("gpt/train/pretrain", {**TINY, "training/tokens": 10}, require=True)
    with pytest.raises(ConfigError, match="training/tokens=10 is less than one step"):
        PretrainGPT(values)


@pytest.mark.slow
def test_tensorboard_gets_the_metrics_rows_at_their_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path / "run", **{"logging/tensorboard": True, "training/tokens": 4 * 32 * 6})
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    logged = rows(tmp_path / "run")
    for key in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_sec"):
        expected = [(r["step"], r[key]) for r in logged if key in r]
        seen = [(e.step, float(np.asarray(tensor_value(e)))) for e in events.Tensors(key)]
        assert [s for s, _ in seen] == [s for s, _ in expected] and len(seen) >= 2, key
        assert [v for _, v in seen] == pytest.approx([v for _, v in expected], rel=1e-6), key


def tensor_value(event):
    from tensorboard.util.tensor_util import make_ndarray

    return make_ndarray(event.tensor_proto)


@pytest.mark.slow
def test_mfu_is_measured_against_every_device_of_the_mesh(tmp_path):
    job, _ = train(tmp_path / "run", **{"topology/devices": 2, "training/tokens": 4 * 32 * 4})
    train_rows = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert len(train_rows) == 2
    for row in train_rows:  # the batch is split over 2 devices, each with a peak of 1e12 FLOP/s
        assert row["mfu"] == pytest.approx(
            row["tokens_per_sec"] * flops_per_token(job.model, job.values, job.config.block_size) / 2e12
        )


def test_the_schedule_and_its_cycles_come_from_the_config():
    from theseus.training.schedules import WSD, WSDS

    assert isinstance(job_for().build_schedule(), WSD)  # the trainer's own schedule() by default
    job = job_for(
        **{
            "optimization/schedule": "wsd-s",
            "optimization/cycles": [6],
            "optimization/warmup": 0,
            "optimization/decay": 0.5,
            "optimization/lr": 1.0,
        }
    )
    schedule = job.build_schedule()
    assert isinstance(schedule, WSDS) and schedule.cycles == [6] and job.total_steps == 12
    lrs = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(13)]
    # two cycles of 6 steps: the peak for 3 steps, then 1-sqrt decay over the other 3, towards 0
    decay = [1 - math.sqrt(k / 3) for k in range(3)]
    np.testing.assert_allclose(lrs, [1, 1, 1, *decay, 1, 1, 1, *decay, 0], atol=1e-6)
