"""Fine-tuning jobs end to end: a chat task the base fails and the fine-tune solves (all
weights and LoRA), measured by the evaluation code on the exported folder; LoRA runs
checkpoint the adapters alone with their base, and resume from them."""

import json

import h5py
import numpy as np
import pytest
from hf_checkpoints import save_checkpoint, tokenizer
from safetensors.numpy import load_file

from theseus.config import ConfigError
from theseus.evaluation.exact_match import ExactMatch
from theseus.experiments import JOBS, runs
from theseus.experiments.sources import load
from theseus.training import checkpoint as ckpt

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
ANSWER = {w: WORDS[(i + 1) % len(WORDS)] for i, w in enumerate(WORDS)}  # each word -> the next one
TINY = {
    "architecture/block_size": 32,
    "training/batch_size": 8,
    "optimization/warmup": 0,
    "optimization/weight_decay": 0.0,
    "logging/validation_interval": 50,
    "logging/validation_batches": 1,
    "logging/log_interval": 10,
    "logging/progress_bar": False,
    "logging/plot": False,
    "logging/peak_flops": 1e12,
    "topology/devices": 1,
    "data/validation_fraction": 0.05,
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A Llama checkpoint whose tokenizer has a chat template, the chats, and the exact-match file."""
    root = tmp_path_factory.mktemp("task")
    source = save_checkpoint(root / "base", "llama", with_tokenizer=False)
    hf = tokenizer(source, chat_template=TEMPLATE)
    chats = root / "chats.jsonl"
    rows = [{"prompt": w, "response": ANSWER[w]} for w in WORDS] * 40
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exact = root / "exact.jsonl"
    prompts = [
        hf.apply_chat_template([{"role": "user", "content": w}], tokenize=False, add_generation_prompt=True)
        for w in WORDS
    ]
    exact.write_text("".join(json.dumps({"prompt": p, "answer": ANSWER[w]}) + "\n" for p, w in zip(prompts, WORDS)))
    return source, chats, exact


def run_job(key, run_dir, **overrides):
    fields, values = runs.configure(key, {**TINY, **overrides}, require=True)
    runs.prepare_run_dir(run_dir, key, fields, values)
    return JOBS[key](values, run_dir).run()


def exact_match(folder, exact):
    return ExactMatch(str(exact), until=(), max_new_tokens=4)(load(str(folder)))["exact_match"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_finetune_solves_a_chat_task_the_base_fails(mode, task, tmp_path):
    source, chats, exact = task
    settings = (
        {"optimization/lr": 1e-2, "optimization/clip_norm": 0.0}
        if mode == "full"
        else {"lora/enabled": True, "lora/rank": 8, "optimization/lr": 1e-2}
    )
    result = run_job(
        "llama/train/finetune",
        tmp_path / "run",
        **{
            "architecture/huggingface/model": str(source),
            "data/source": str(chats),
            "finetune/data": "chat",
            "training/tokens": 8 * 32 * 200,
            "logging/checkpoint_interval": 100,
        },
        **settings,
    )
    assert exact_match(source, exact) == 0.0
    assert exact_match(tmp_path / "run" / "hf", exact) == 1.0
    if mode == "full":
        assert result["trainable_parameters"] == result["parameters"]
        return

    # LoRA: checkpoints hold the adapters (and their optimizer state) with a reference to the base.
    assert result["trainable_parameters"] < 0.2 * result["parameters"]
    latest = ckpt.latest(tmp_path / "run" / "checkpoints")
    weights = latest.path / ckpt.MODEL_FILE
    with h5py.File(weights, "r") as f:  # the adapters alone (sizes against a base: test_lora)
        saved = []
        f["weights"].visit(lambda name: saved.append(name) if isinstance(f["weights"][name], h5py.Dataset) else None)
    assert len(saved) == 2 * 2 * 7 and all(
        name.rsplit("/", 1)[1] in ("lora_kernel_a", "lora_kernel_b") for name in saved
    )
    base = latest.state["base"]
    assert base["kind"] == "huggingface" and base["path"] == str(source.resolve()) and len(base["fingerprint"]) == 16
    exported = load_file(str(tmp_path / "run" / "hf" / "model.safetensors"))

    # Running the same command again resumes from the adapters: the same merged export.
    again = run_job(
        "llama/train/finetune",
        tmp_path / "run",
        **{
            "architecture/huggingface/model": str(source),
            "data/source": str(chats),
            "finetune/data": "chat",
            "training/tokens": 8 * 32 * 200,
            "logging/checkpoint_interval": 100,
        },
        **settings,
    )
    assert again["start_step"] == again["total_steps"]
    for name, value in load_file(str(tmp_path / "run" / "hf" / "model.safetensors")).items():
        np.testing.assert_array_equal(value, exported[name], err_msg=name)


def test_gpt_finetune_needs_a_run_to_start_from(tmp_path):
    with pytest.raises(ConfigError, match="finetune/init_from"):
        run_job("gpt/train/finetune", tmp_path / "run", **{"training/tokens": 8 * 32})
    with pytest.raises(ConfigError, match="neither a run folder"):
        run_job(
            "gpt/train/finetune", tmp_path / "run2", **{"training/tokens": 8 * 32, "finetune/init_from": str(tmp_path)}
        )
