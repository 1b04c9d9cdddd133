"""GRPO (`theseus.training.grpo`): the objective against a float64 NumPy computation of the
formula, group advantages, the job on every backend (a tiny Llama with LoRA, whose reference
is its base: the KL of the first step is exactly 0), a verifiable task whose held-out reward
GRPO raises, and a SIGKILLed run that resumes to the uninterrupted run's weights."""

import json
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from hf_checkpoints import save_checkpoint
from support import run_command

from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.rewards import reward_function
from theseus.experiments import JOBS, runs
from theseus.experiments.sources import load
from theseus.training import checkpoint as ckpt
from theseus.training.grpo import CHANNELS, GRPOLoss, completion_length, group_advantages, kl, reward

QUIET = {
    "logging/progress_bar": False,
    "logging/plot": False,
    "logging/peak_flops": 1e12,
    "topology/devices": 1,
    "optimization/warmup": 0,
}


def numpy_objective(logits, y, beta, clip):
    """GRPO's loss in float64, written from the formula: per token -min(r A, clip(r) A) + beta k3,
    r = exp(logp - old), k3 = exp(ref - logp) - (ref - logp) - 1; the NLL on validation rows;
    the mean over each row's masked tokens, then over rows."""
    logits, y = logits.astype("float64"), y.astype("float64")
    c = {name: y[..., i] for i, name in enumerate(CHANNELS)}
    shifted = logits - logits.max(-1, keepdims=True)
    logp_all = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    logp = np.take_along_axis(logp_all, c["target"].astype(int)[..., None], -1)[..., 0]
    ratio = np.exp(logp - c["old_logp"])
    a = c["advantage"]
    policy = -np.minimum(ratio * a, np.clip(ratio, 1 - clip, 1 + clip) * a)
    k3 = np.exp(c["ref_logp"] - logp) - (c["ref_logp"] - logp) - 1
    per_token = np.where(c["sampled"] > 0, policy + beta * k3, -logp)
    per_row = (per_token * c["mask"]).sum(-1) / np.maximum(c["mask"].sum(-1), 1)
    return per_row.mean(), logp


def fixed_batch(seed=0, rows=4, length=6, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, length, vocab)).astype("float32")
    y = np.zeros((rows, length, len(CHANNELS)), "float32")
    channel = {name: i for i, name in enumerate(CHANNELS)}
    y[..., channel["target"]] = rng.integers(0, vocab, (rows, length))
    y[..., channel["mask"]] = rng.random((rows, length)) < 0.7
    y[..., channel["advantage"]] = rng.normal(size=(rows, 1))
    y[..., channel["ref_logp"]] = -rng.random((rows, length)) * 3
    y[..., channel["reward"]] = rng.random((rows, 1))
    y[..., channel["sampled"]] = np.array([1, 1, 1, 0])[:, None]  # the last row: a validation row
    return logits, y, channel


def test_objective_equals_a_float64_numpy_computation_of_the_formula():
    logits, y, channel = fixed_batch()
    _, logp = numpy_objective(logits, y, 0.0, 0.2)
    # old log-probs far enough from the new ones that the ratio leaves [0.8, 1.2] on some tokens
    y[..., channel["old_logp"]] = logp + np.random.default_rng(1).normal(scale=0.4, size=logp.shape)
    for beta, clip in [(0.04, 0.2), (0.5, 0.1), (0.0, 10.0)]:
        expected, _ = numpy_objective(logits, y, beta, clip)
        got = float(keras.ops.convert_to_numpy(GRPOLoss(beta, clip)(y, logits)))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), (beta, clip)
    # the clip binds: a wider one changes the loss
    narrow, wide = (float(keras.ops.convert_to_numpy(GRPOLoss(0.04, c)(y, logits))) for c in (0.01, 10.0))
    assert abs(narrow - wide) > 1e-3

    # the metrics: each row's reward, its k3 KL between the sampling weights and the reference, its length
    c = {name: y[..., i].astype("float64") for i, name in enumerate(CHANNELS)}
    delta = c["ref_logp"] - c["old_logp"]
    k3 = ((np.exp(delta) - delta - 1) * c["mask"]).sum(-1) / np.maximum(c["mask"].sum(-1), 1)
    for metric, expected in [(kl, k3), (reward, c["reward"][:, 0]), (completion_length, c["mask"].sum(-1))]:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(metric(y, logits)), expected, rtol=1e-5, atol=1e-6)


def test_group_advantages_are_normalised_within_each_group():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 1.0, 0.25])
    got = group_advantages(rewards, 4)
    groups = rewards.reshape(3, 4)
    expected = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(got, expected.reshape(-1), rtol=1e-12)
    assert np.all(got[4:8] == 0)  # a group that scores alike teaches nothing


def test_rewards_by_name(tmp_path, monkeypatch):
    row = {"prompt": "2+2=", "answer": "4"}
    assert reward_function("exact_match")(" 4 ", row) == 1.0
    assert reward_function("exact_match")("44", row) == 0.0
    assert reward_function("regex:^\\s*{answer}\\b")("4 apples", row) == 1.0
    assert reward_function("regex:^\\s*{answer}\\b")("14", row) == 0.0
    (tmp_path / "my_rewards.py").write_text("def short(completion, row):\n    return -len(completion)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reward_function("my_rewards:short")("abc", row) == -3
    from theseus.config import ConfigError

    for bad, message in [
        ("regex:(", "not a regular expression"),
        ("nowhere_at_all:f", "cannot import"),
        ("x", "none of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            reward_function(bad)


def run_job(key, run_dir, **values):
    fields, resolved = runs.configure(key, {**QUIET, **values}, require=True)
    runs.prepare_run_dir(run_dir, key, fields, resolved)
    trainer = JOBS[key](resolved, run_dir)
    return trainer, trainer.run()


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_job_runs_and_its_reference_is_the_starting_model(tmp_path):
    """The HF job end to end (on whichever backend runs the tests: the marked subset covers all
    three): metrics rows hold reward, KL and completion length; the reference is the starting
    weights, so the first step, sampled with them, is exactly at KL 0 (LoRA: the resume test)."""
    source = save_checkpoint(tmp_path / "base", "llama")
    prompts = tmp_path / "prompts.jsonl"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    prompts.write_text(
        "".join(json.dumps({"prompt": w, "answer": words[(i + 1) % 8]}) + "\n" for i, w in enumerate(words))
    )
    _, result = run_job(
        "llama/train/grpo",
        tmp_path / "run",
        **{
            "architecture/huggingface/model": str(source),
            "architecture/block_size": 16,
            "data/source": str(prompts),
            "data/validation_fraction": 0.25,
            "training/batch_size": 4,
            "training/tokens": 4 * 16 * 3,
            "grpo/group_size": 2,
            "grpo/max_new_tokens": 4,
            "optimization/lr": 1e-2,
            "logging/log_interval": 1,
            "logging/validation_interval": 3,
            "logging/validation_batches": 1,
        },
    )
    rows = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 <= r["reward"] <= 1 and 1 <= r["completion_length"] <= 4 and np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["kl"] == 0.0 and rows[2]["kl"] > 0.0  # sampled from the base, then from the adapted model
    assert result["trainable_parameters"] == result["parameters"] and (tmp_path / "run" / "hf").is_dir()


# ----------------------------------------------------------------------------- a task GRPO learns

LETTERS = "abcdefghij"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny GPT pretrained on lines `<letter><digit><next>`: after digit d comes d + 1 (mod 10)
    30% of the time and d + 2 the rest, so it answers `d + 1` (the reward) with probability
    about 0.3 and never greedily; the prompts file asks every (letter, digit) pair."""
    root = tmp_path_factory.mktemp("grpo_task")
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(4000):
        a, b = rng.integers(10, size=2)
        lines.append(f"{LETTERS[a]}{b}{(b + 1) % 10 if rng.random() < 0.3 else (b + 2) % 10}\n")
    (root / "text.txt").write_text("".join(lines))
    rows = [{"prompt": f"{LETTERS[a]}{b}", "answer": str((b + 1) % 10)} for a in range(10) for b in range(10)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_job(
        "gpt/train/pretrain",
        root / "base",
        **{**ARCH, "data/source": str(root / "text.txt"), "training/tokens": 32 * 16 * 150, "optimization/lr": 3e-3},
        **{"logging/validation_interval": 150, "logging/checkpoint_interval": 150},
    )
    return root


ARCH = {
    "architecture/block_size": 16,
    "architecture/n_layer": 2,
    "architecture/n_head": 4,
    "architecture/n_embd": 64,
    "training/batch_size": 32,
}


def grpo_values(task, steps, **more):
    return {
        **ARCH,
        "data/source": str(task / "prompts.jsonl"),
        "data/validation_fraction": 0.2,
        "finetune/init_from": str(task / "base"),
        "grpo/group_size": 8,
        "grpo/max_new_tokens": 3,
        "training/tokens": 32 * 16 * steps,
        "optimization/lr": 3e-4,
        "logging/validation_interval": 20,
        **more,
    }


def sampled_reward(lm, rows, seeds=8):
    """The mean exact-match reward of completions sampled at temperature 1 (several seeds)."""
    score = reward_function("exact_match")
    hits = []
    for seed in range(seeds):
        texts = lm.generate([r["prompt"] for r in rows], 3, until=["\n"], temperature=1.0, seed=seed)
        hits += [score(t, r) for t, r in zip(texts, rows)]
    return float(np.mean(hits))


@pytest.mark.slow
def test_grpo_raises_the_held_out_reward(task, tmp_path):
    """60 steps of 4 prompts x 8 completions (about a minute on a laptop CPU, after a 150-step
    pretraining): the mean reward on the held-out prompts rises by at least 0.3."""
    trainer, result = run_job(
        "gpt/train/grpo", tmp_path / "run", **grpo_values(task, 60, **{"logging/log_interval": 5})
    )
    heldout = trainer.tuning.prompts.heldout
    before = sampled_reward(load(str(task / "base")), heldout)
    after = sampled_reward(LanguageModel(trainer.model, trainer.tokenizer()), heldout)
    print(f"held-out reward {before:.3f} -> {after:.3f}")
    assert after - before >= 0.3, (before, after)
    rows = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert all(r["kl"] >= 0 for r in rows) and rows[-1]["kl"] > 0
    assert result["val_loss"] < result["initial_val_loss"]  # the held-out answers became likelier


KILL_AT = Path(__file__).with_name("kill_at.py")


def weights(run_dir):
    path = ckpt.latest(run_dir / "checkpoints").path / ckpt.MODEL_FILE
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


@pytest.mark.slow
def test_a_killed_lora_run_resumes_to_the_uninterrupted_weights(task, tmp_path):
    """With LoRA: the checkpoints hold the adapters, and the reference is the base (the first
    step, sampled with the adapters at zero, is exactly at KL 0)."""
    lora = {"lora/enabled": True, "lora/rank": 4, "optimization/lr": 3e-3}
    values = grpo_values(task, 6, **QUIET, **lora, **{"logging/checkpoint_interval": 2, "logging/log_interval": 1})
    fields, resolved = runs.configure("gpt/train/grpo", values, require=True)
    config = tmp_path / "grpo.yaml"
    config.write_text(runs.config_text("gpt/train/grpo", fields, resolved))

    def cli(out, *kill):
        command = [str(KILL_AT), *kill] if kill else ["-m", "theseus.cli"]
        return run_command([sys.executable, *command, "run", "dev", str(config), str(out)])

    assert cli(tmp_path / "whole").returncode == 0
    killed = cli(tmp_path / "killed", "SIGKILL@step:3")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert ckpt.latest(tmp_path / "killed" / "dev" / "checkpoints").step == 2
    assert cli(tmp_path / "killed").returncode == 0
    whole, resumed = weights(tmp_path / "whole" / "dev"), weights(tmp_path / "killed" / "dev")
    assert sorted(whole) == sorted(resumed) and len(whole) > 20
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
    rows = [json.loads(line) for line in (tmp_path / "killed" / "dev" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "whole" / "dev" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("reward") for r in rows] == [r.get("reward") for r in reference]  # the same samples
    assert rows[1]["step"] == 1 and rows[1]["kl"] == 0.0 and rows[-1]["kl"] > 0.0
