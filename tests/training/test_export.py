"""The exports after a run: a LoRA fine-tune of a Hugging Face folder writes `RUN/hf` (merged)
and `RUN/peft`, which real `peft` loads over the base with the same logits."""

import json

import keras
import numpy as np
import peft  # the test extra's: loaded by peft itself, never skipped
import pytest
import transformers
from hf_checkpoints import VOCAB, save_checkpoint
from peft_adapters import base_model, torch_logits
from test_hf_training import run_job as hf_run_job

LORA = {"lora/enabled": True, "lora/rank": 4, "lora/alpha": 8.0}  # on the HF training tests' tiny run


def run_job(key, run_dir, **overrides):
    return hf_run_job(key, run_dir, **LORA, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "targets"),
    [("gpt2", ["query", "value", "mlp"]), ("llama", ["attn", "mlp"]), ("qwen2_moe", ["attn", "mlp"])],
)
def test_a_lora_finetune_writes_a_peft_adapter_equal_to_its_merged_export(family, targets, text, tmp_path):
    source = save_checkpoint(tmp_path / "base", family)
    overrides = {"architecture/huggingface/model": str(source), "data/source": str(text), "lora/targets": targets}
    job, result = run_job(f"{family}/train/finetune", tmp_path / "run", **overrides)
    adapter = tmp_path / "run" / "peft"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(source.resolve()) and config["r"] == 4
    loaded = peft.PeftModel.from_pretrained(base_model(source), str(adapter))
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 16)).astype("int32")
    merged = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(result["hf_folder"]), ids)
    np.testing.assert_allclose(torch_logits(loaded, ids), merged, atol=1e-4, rtol=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(job.model(ids)), merged, atol=1e-4, rtol=0)
    assert np.abs(torch_logits(base_model(source), ids) - merged).max() > 1e-3  # it did train


@pytest.mark.slow
def test_a_run_that_trains_more_than_adapters_writes_no_peft_folder(text, tmp_path):
    source = save_checkpoint(tmp_path / "base", "qwen2")
    overrides = {"architecture/huggingface/model": str(source), "data/source": str(text)}
    run_job("qwen2/train/finetune", tmp_path / "norms", **overrides, **{"finetune/trainable": ["ln_"]})
    assert (tmp_path / "norms" / "hf").is_dir() and not (tmp_path / "norms" / "peft").exists()
