"""HF jobs end to end in-process: fine-tune (plain and tensor-parallel) and pretrain from a
Hugging Face folder, export RUN/hf, and check it against `transformers`."""

import json

import keras
import numpy as np
import pytest
import torch
import transformers
from hf_checkpoints import FAMILIES, VOCAB, save_checkpoint, tokenizer
from safetensors.torch import load_file

from theseus.config import ConfigError
from theseus.data import HFTokenizer
from theseus.experiments import JOBS, runs

TINY = {
    "architecture/block_size": 16,
    "training/batch_size": 4,
    "training/tokens": 4 * 16 * 3,
    "optimization/lr": 1e-2,
    "optimization/warmup": 0,
    "logging/validation_interval": 3,
    "logging/validation_batches": 1,
    "logging/checkpoint_interval": 3,
    "logging/log_interval": 1,
    "logging/progress_bar": False,
    "logging/plot": False,
    "logging/peak_flops": 1e12,
    "topology/devices": 1,
}
SHARDED = {"qwen3": {"topology/strategy": "tp", "topology/shard": 2, "topology/devices": 8}}  # a (4, 2) mesh
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"


def run_job(key, run_dir, **overrides):
    fields, values = runs.configure(key, {**TINY, **overrides}, require=True)
    runs.prepare_run_dir(run_dir, key, fields, values)
    job = JOBS[key](values, run_dir)
    return job, job.run()


def transformers_logits(folder, ids):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        return model.eval()(torch.tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_exports_a_folder_transformers_reads_with_the_same_logits(family, text, tmp_path):
    if family in SHARDED and keras.backend.backend() != "jax":
        pytest.skip("tensor parallelism needs the JAX backend")
    source = save_checkpoint(tmp_path / "source", family)
    job, result = run_job(
        f"{family}/train/finetune",
        tmp_path / "run",
        **{"architecture/huggingface/model": str(source), "data/source": str(text)},
        **SHARDED.get(family, {}),
    )
    exported = tmp_path / "run" / "hf"
    assert result["hf_folder"] == str(exported) and result["total_steps"] == 3
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 16)).astype("int32")
    ours = keras.ops.convert_to_numpy(job.model(ids))
    np.testing.assert_allclose(transformers_logits(exported, ids), ours, atol=1e-4, rtol=0)
    before, after = load_file(str(source / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert set(before) == set(after)
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 1e-3  # it did train
    assert (exported / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    if family in SHARDED:  # trained sharded: heads split over the shard axis
        query = next(v for v in job.model.weights if v.path.endswith("block_0/attn/query/kernel"))
        assert tuple(query.value.sharding.spec)[:2] == (None, "shard")


@pytest.mark.slow
def test_pretrain_starts_from_random_weights_and_exports(text, tmp_path):
    folder = tmp_path / "arch"
    save_checkpoint(folder, "llama")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()  # config.json and the tokenizer are all pretraining needs
    job, result = run_job(
        "llama/train/pretrain",
        tmp_path / "run",
        **{"architecture/huggingface/model": str(folder), "data/source": str(text)},
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[0] == pytest.approx(np.log(VOCAB), abs=0.5) and val[-1] < val[0]  # random start, then learning
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 16)).astype("int32")
    np.testing.assert_allclose(
        transformers_logits(tmp_path / "run" / "hf", ids), keras.ops.convert_to_numpy(job.model(ids)), atol=1e-4, rtol=0
    )


def test_the_folder_tokenizer_drives_the_data_with_its_chat_template(tmp_path):
    folder = save_checkpoint(tmp_path / "qwen", "qwen2", with_tokenizer=False)
    reference = tokenizer(folder, chat_template=TEMPLATE)
    fields, values = runs.configure(
        "qwen2/train/finetune", {**TINY, "architecture/huggingface/model": str(folder)}, require=True
    )
    job = JOBS["qwen2/train/finetune"](values)
    ours = job.tokenizer()
    assert isinstance(ours, HFTokenizer) and ours.eos_id == reference.eos_token_id
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the fox"}]
    assert ours.apply_chat_template(messages, tokenize=False) == reference.apply_chat_template(messages, tokenize=False)
    text = "the quick brown fox"
    np.testing.assert_array_equal(ours.encode(text), reference(text, add_special_tokens=False)["input_ids"])


def test_hf_jobs_check_their_input_before_anything_runs(tmp_path):
    qwen = save_checkpoint(tmp_path / "qwen", "qwen2")
    gpt2 = save_checkpoint(tmp_path / "gpt2", "gpt2")

    def job(key, **overrides):
        fields, values = runs.configure(key, {**TINY, **overrides}, require=True)
        return JOBS[key](values)

    with pytest.raises(
        ConfigError, match=r"holds a qwen2 model but FinetuneLlama takes llama; use the qwen2/\.\.\. jobs"
    ):
        job("llama/train/finetune", **{"architecture/huggingface/model": str(qwen)})
    with pytest.raises(ConfigError, match=r"architecture/block_size=64 exceeds the 32 learned positions"):
        job(
            "gpt2/train/finetune",
            **{"architecture/huggingface/model": str(gpt2), "architecture/block_size": 64, "training/tokens": 4 * 64},
        )
    big = transformers.AutoTokenizer.from_pretrained(str(qwen))
    big.add_tokens([f"<extra_{i}>" for i in range(VOCAB)])
    big.save_pretrained(str(tmp_path / "big-tokenizer"))
    with pytest.raises(
        ConfigError, match=rf"data/tokenizer has {300 + VOCAB} tokens but the model .* has {VOCAB} embedding rows"
    ):
        job(
            "qwen2/train/finetune",
            **{"architecture/huggingface/model": str(qwen), "data/tokenizer": str(tmp_path / "big-tokenizer")},
        )
    bare = save_checkpoint(tmp_path / "bare", "qwen2", with_tokenizer=False)
    with pytest.raises(ConfigError, match=r"data/tokenizer is auto but .*bare has no tokenizer files"):
        job("qwen2/train/pretrain", **{"architecture/huggingface/model": str(bare)})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_pretrain_finetune_and_evaluate_jobs(family):
    for kind, init in [("train/pretrain", "random"), ("train/finetune", "checkpoint"), ("eval/evaluate", None)]:
        fields, values = runs.configure(f"{family}/{kind}")
        assert values["architecture/huggingface/model"] == "???" and values["data/tokenizer"] == "auto"
        assert values.get("training/init") == init
        assert JOBS[f"{family}/{kind}"].MODEL_TYPES == (family,)
