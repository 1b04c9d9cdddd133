"""`FAMILY/eval/evaluate` on a Hugging Face folder, scored against `transformers`."""

import json

import numpy as np
import pytest
import torch
import transformers
from hf_checkpoints import save_checkpoint

from theseus.config import ConfigError
from theseus.experiments import JOBS, runs


@pytest.fixture
def corpus(tmp_path):
    from pydoc_data.topics import topics

    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(topics[k] for k in sorted(topics)[:2])[:8000])
    return path


def configure(key, **overrides):
    return runs.configure(key, overrides, require=True)[1]


@pytest.mark.slow
def test_perplexity_of_the_held_out_windows_matches_transformers(corpus, tmp_path):
    folder = save_checkpoint(tmp_path / "mistral", "mistral")
    values = configure(
        "mistral/eval/evaluate",
        **{
            "architecture/huggingface/model": str(folder),
            "data/source": str(corpus),
            "architecture/block_size": 16,
            "evaluation/batch_size": 4,
            "evaluation/tokens": 0,
        },
    )
    job = JOBS["mistral/eval/evaluate"](values, tmp_path / "run")
    batches = list(job.heldout())
    assert len(batches) >= 2 and batches[0][0].shape == (4, 16)
    results = job.run()["perplexity"]

    reference = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets, *_ in batches:  # padding rows of a last partial batch have negative targets
            logp = torch.log_softmax(reference(torch.tensor(inputs, dtype=torch.long)).logits.double(), -1)
            real = torch.tensor(targets >= 0)
            picked = logp.gather(-1, torch.tensor(np.maximum(targets, 0), dtype=torch.long)[..., None])[..., 0]
            total -= float(picked[real].sum())
            count += int(real.sum())
    assert results["tokens"] == count
    assert results["nll"] == pytest.approx(total / count, rel=1e-5)
    assert results["ppl"] == pytest.approx(np.exp(total / count), rel=1e-5)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written == {"checkpoint": str(folder), "results": {"perplexity": results}}


def test_evaluation_needs_the_weights_and_a_known_task(tmp_path):
    folder = save_checkpoint(tmp_path / "gpt2", "gpt2")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ConfigError, match=r"gpt2 has no \*.safetensors weights"):
        JOBS["gpt2/eval/evaluate"](configure("gpt2/eval/evaluate", **{"architecture/huggingface/model": str(folder)}))
    folder = save_checkpoint(tmp_path / "qwen3", "qwen3")
    with pytest.raises(ConfigError, match=r"unknown evaluation 'perplexty' \(did you mean 'perplexity'\?\)"):
        JOBS["qwen3/eval/evaluate"](
            configure(
                "qwen3/eval/evaluate",
                **{"architecture/huggingface/model": str(folder), "evaluation/tasks": ["perplexty"]},
            )
        )
