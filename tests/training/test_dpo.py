"""DPO jobs end to end: a synthetic preference the start model lacks (the answer that ends
with "!") learnt to held-out accuracy >= 0.9, with all weights and with LoRA; the job on every
backend; a SIGKILLed run resumed to the uninterrupted run's weights; fsdp over 8 devices
equal to one device; the native GPT job from a pretraining run."""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from hf_checkpoints import save_checkpoint, tokenizer
from support import needs_jax, run_command
from test_checkpoint import weights_file

from theseus.config import ConfigError
from theseus.data.preference import split_pairs
from theseus.experiments import JOBS, runs
from theseus.training import checkpoint as ckpt
from theseus.training.dpo import REFERENCE_FILE, reference_logps

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TINY = {
    "architecture/block_size": 16,
    "training/batch_size": 16,  # 8 pairs
    "optimization/warmup": 0,
    "optimization/weight_decay": 0.0,
    "dpo/beta": 0.5,
    "data/validation_fraction": 0.2,
    "logging/validation_interval": 100,
    "logging/validation_batches": 5,
    "logging/log_interval": 2,
    "logging/progress_bar": False,
    "logging/plot": False,
    "logging/peak_flops": 1e12,
    "topology/devices": 1,
}
KILL_AT = Path(__file__).with_name("kill_at.py")


def preference_pairs(path, count=200, seed=0):
    """Pairs whose chosen answer ends with "!" and rejected one with other punctuation; the words
    are random, so a model that has not learnt the rule prefers either about half the time."""
    rng = np.random.default_rng(seed)

    def word():
        return "".join(rng.choice(list("abcdefgh"), 3))

    rows = [
        {"prompt": word() + "=", "chosen": word() + "!", "rejected": word() + rng.choice(list(".?,;"))}
        for _ in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A Llama checkpoint (its tokenizer without a chat template) and the preference pairs."""
    root = tmp_path_factory.mktemp("dpo")
    source = save_checkpoint(root / "base", "llama")
    return source, preference_pairs(root / "pairs.jsonl")


def configure(key, overrides):
    tiny = {k: v for k, v in TINY.items() if key.endswith("/dpo") or not k.startswith("dpo/")}
    return runs.configure(key, {**tiny, **overrides}, require=True)


def run_job(key, run_dir, **overrides):
    fields, values = configure(key, overrides)
    runs.prepare_run_dir(run_dir, key, fields, values)
    job = JOBS[key](values, run_dir)
    return job, job.run()


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def held_out_accuracy(logps):
    return float(np.mean(logps[:, 0] > logps[:, 1]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_dpo_learns_a_preference_the_start_model_lacks(mode, task, tmp_path):
    source, pairs = task
    settings = {"optimization/lr": 3e-3} if mode == "full" else {"lora/enabled": True, "optimization/lr": 2e-2}
    job, result = run_job(
        "llama/train/dpo",
        tmp_path / "run",
        **{"architecture/huggingface/model": str(source), "data/source": str(pairs), "training/tokens": 16 * 16 * 24},
        **settings,
    )
    held = split_pairs(len(job.tuning.pairs), 0.2)[1]
    before = held_out_accuracy(np.load(tmp_path / "run" / REFERENCE_FILE)["logps"][held])
    after = held_out_accuracy(reference_logps(job.model, job.tuning.pairs, 16)[held])
    print(f"{mode}: held-out preference accuracy {before:.2f} -> {after:.2f}")
    assert 0.3 <= before <= 0.7 and after >= 0.9, (before, after)
    assert result["val_reward_accuracy"] >= 0.9
    if mode == "lora":
        assert result["trainable_parameters"] < result["parameters"] / 5 and result["merged_layers"] > 0
        assert (tmp_path / "run" / "peft" / "adapter_config.json").is_file()


def test_the_job_runs_on_chats_and_reports_rewards(tmp_path):
    """Chat records (`messages` and two final turns) through the tokenizer's template, on the
    running backend; metrics rows with rewards; a second run reads the reference back."""
    source = save_checkpoint(tmp_path / "base", "llama", with_tokenizer=False)
    tokenizer(source, chat_template=TEMPLATE)
    records = [
        {"messages": [{"role": "user", "content": w}], "chosen": w + "!", "rejected": w + "?"}
        for w in ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"] * 3
    ]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = {
        "architecture/huggingface/model": str(source),
        "architecture/block_size": 32,
        "data/source": str(data),
        "training/batch_size": 4,
        "training/tokens": 4 * 32 * 4,
        "logging/validation_interval": 4,
        "logging/validation_batches": 1,
        "optimization/lr": 1e-3,
    }
    run_dir = tmp_path / "run"
    _, result = run_job("llama/train/dpo", run_dir, **settings)
    metrics = rows(run_dir)
    assert metrics[0]["val_loss"] == pytest.approx(np.log(2), rel=1e-5)  # the policy starts as the reference
    trained = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in trained] == [2, 4]
    assert all({"reward_margin", "reward_accuracy"} <= set(r) for r in trained)
    assert {"val_reward_margin", "val_reward_accuracy"} <= set(metrics[-1])
    reference = np.load(run_dir / REFERENCE_FILE)["logps"]
    assert reference.shape == (len(records), 2) and np.all(reference < 0)
    assert (run_dir / "hf" / "config.json").is_file()
    written = (run_dir / REFERENCE_FILE).stat().st_mtime_ns
    fields, values = configure("llama/train/dpo", settings)
    again = JOBS["llama/train/dpo"](values, run_dir).run()
    assert again["start_step"] == again["total_steps"] == 4
    assert (run_dir / REFERENCE_FILE).stat().st_mtime_ns == written  # read back, not computed again


def test_an_odd_batch_and_a_bad_record_are_refused(task, tmp_path):
    source, pairs = task
    base = {"architecture/huggingface/model": str(source), "data/source": str(pairs), "training/tokens": 16 * 16}
    fields, values = configure("llama/train/dpo", {**base, "training/batch_size": 6, "training/micro_batch_size": 3})
    with pytest.raises(ConfigError, match=r"training/micro_batch_size=3 must be even"):
        JOBS["llama/train/dpo"](values, None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    fields, values = configure("llama/train/dpo", {**base, "data/source": str(bad)})
    with pytest.raises(ConfigError, match=r"line 1 of .*bad.jsonl needs `chosen` and `rejected`"):
        JOBS["llama/train/dpo"](values, None)
    few = preference_pairs(tmp_path / "few.jsonl", count=5)
    fields, values = configure("llama/train/dpo", {**base, "data/source": str(few)})
    with pytest.raises(ConfigError, match=r"data/source: 4 training pairs, fewer than the 8 pairs of a batch"):
        JOBS["llama/train/dpo"](values, None)


def cli_run(config, out, kill_at=None):
    command = [str(KILL_AT), kill_at] if kill_at else ["-m", "theseus.cli"]
    return run_command([sys.executable, *command, "run", "dev", str(config), str(out)])


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(task, tmp_path):
    source, pairs = task
    settings = {
        "architecture/huggingface/model": str(source),
        "data/source": str(pairs),
        "training/tokens": 16 * 16 * 8,
        "optimization/lr": 3e-3,
        "logging/checkpoint_interval": 2,
        "training/export": False,
    }
    fields, values = configure("llama/train/dpo", settings)
    config = tmp_path / "dpo.yaml"
    config.write_text(runs.config_text("llama/train/dpo", fields, values))
    reference = cli_run(config, tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = cli_run(config, tmp_path / "killed", kill_at="SIGKILL@step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "killed" / "dev"
    written = (run_dir / REFERENCE_FILE).stat().st_mtime_ns
    resumed = cli_run(config, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and (run_dir / REFERENCE_FILE).stat().st_mtime_ns == written
    a, b = (ckpt.latest(d / "checkpoints") for d in (tmp_path / "uninterrupted" / "dev", run_dir))
    assert a.step == b.step == 8
    wa, wb = weights_file(a.path), weights_file(b.path)
    assert sorted(wa) == sorted(wb) and len(wa) > 20
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=1e-6, rtol=0, err_msg=key)
    uninterrupted, again = rows(tmp_path / "uninterrupted" / "dev"), rows(run_dir)
    assert [r["step"] for r in again] == [r["step"] for r in uninterrupted]
    assert again[-1]["loss"] == pytest.approx(uninterrupted[-1]["loss"], rel=1e-5)


@pytest.mark.slow
@needs_jax()
def test_fsdp_over_eight_devices_equals_one_device(task, tmp_path):
    """Three steps of DPO on one device and sharded fsdp over eight: the same training losses
    and held-out loss within 1e-4 (relative), float32 reductions in another order."""
    source, pairs = task
    settings = {
        "architecture/huggingface/model": str(source),
        "data/source": str(pairs),
        "training/tokens": 16 * 16 * 3,
        "optimization/lr": 3e-3,
        "logging/log_interval": 1,
        "training/export": False,
    }
    losses = {}
    for devices, strategy in ((1, "dp"), (8, "fsdp")):
        run_dir = tmp_path / f"{strategy}{devices}"
        run_job("llama/train/dpo", run_dir, **settings, **{"topology/devices": devices, "topology/strategy": strategy})
        metrics = rows(run_dir)
        losses[devices] = [r["loss"] for r in metrics if "loss" in r] + [metrics[-1]["val_loss"]]
    assert len(losses[1]) == 4 and losses[1][0] != losses[1][2]
    np.testing.assert_allclose(losses[8], losses[1], rtol=1e-4)


@pytest.mark.slow
def test_gpt_dpo_starts_from_a_pretraining_run(task, text, tmp_path):
    """The native family's job: LoRA on a GPT run's checkpoint (`finetune/init_from`), exported."""
    _, pairs = task
    gpt = {"architecture/n_layer": 1, "architecture/n_embd": 32, "architecture/n_head": 2}
    run_job("gpt/train/pretrain", tmp_path / "base", **gpt, **{"data/source": str(text), "training/tokens": 16 * 16})
    with pytest.raises(ConfigError, match="set finetune/init_from"):
        JOBS["gpt/train/dpo"](configure("gpt/train/dpo", {**gpt, "data/source": str(pairs)})[1], None)
    _, result = run_job(
        "gpt/train/dpo",
        tmp_path / "dpo",
        **gpt,
        **{"data/source": str(pairs), "finetune/init_from": str(tmp_path / "base"), "training/tokens": 16 * 16 * 4},
        **{"lora/enabled": True, "optimization/lr": 1e-2},
    )
    assert result["total_steps"] == 4 and result["trainable_parameters"] < result["parameters"]
    assert result["val_loss"] < np.log(2) and (tmp_path / "dpo" / "hf" / "config.json").is_file()
    assert os.path.getsize(tmp_path / "dpo" / REFERENCE_FILE) > 0
