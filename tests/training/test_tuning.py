"""A fine-tune's tuning part started from a PEFT adapter folder made by real `peft`: the
model it trains starts as peft's model (base + adapter), its base fingerprint is the
adapter's, not the bare base's, and its RUN/peft (both adapters) goes over the bare base."""

import keras
import numpy as np
import peft  # the test extra's: loaded by peft itself, never skipped
import pytest
import transformers
from hf_checkpoints import VOCAB, save_checkpoint
from peft_adapters import base_model, peft_adapter, torch_logits

from theseus.experiments import JOBS, runs


@pytest.mark.slow
def test_a_finetune_starts_from_a_peft_adapter_over_its_base(tmp_path):
    from pydoc_data.topics import topics

    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(topics[k] for k in sorted(topics)[:3])[:6000])
    base = save_checkpoint(tmp_path / "base", "gpt2")
    reference = peft_adapter(base, "gpt2", tmp_path / "adapter")
    settings = {
        "data/source": str(text),
        "architecture/block_size": 16,
        "training/batch_size": 4,
        "training/tokens": 4 * 16 * 2,
        "optimization/warmup": 0,
        "logging/progress_bar": False,
        "logging/plot": False,
        "logging/peak_flops": 1e12,
        "topology/devices": 1,
        "lora/enabled": True,
    }

    def job(model, run_dir=None):
        fields, values = runs.configure("gpt2/train/finetune", {**settings, "architecture/huggingface/model": model})
        if run_dir is not None:
            runs.prepare_run_dir(run_dir, "gpt2/train/finetune", fields, values)
        return JOBS["gpt2/train/finetune"](values, run_dir)

    tuned = job(str(tmp_path / "adapter"), tmp_path / "run")
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 16)).astype("int32")
    start = keras.ops.convert_to_numpy(tuned.build_model()(ids))  # LoRA on, its B at zero: the start itself
    np.testing.assert_allclose(start, torch_logits(reference, ids), atol=1e-4, rtol=0)
    assert tuned.tuning.base["fingerprint"] != job(str(base)).tuning.base["fingerprint"]
    result = tuned.run()
    assert result["total_steps"] == 2 and (tmp_path / "run" / "hf" / "model.safetensors").is_file()
    # RUN/peft goes over the bare base: peft's adapter and the run's, stacked
    loaded = peft.PeftModel.from_pretrained(base_model(base), str(tmp_path / "run" / "peft"))
    merged = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(result["hf_folder"]), ids)
    np.testing.assert_allclose(torch_logits(loaded, ids), merged, atol=1e-4, rtol=0)
    assert np.abs(merged - start).max() > 1e-3  # it did train
