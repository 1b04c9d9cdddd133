"""A run's batches: a small text still validates, on the windows it holds."""

import json
import math

import pytest
from hf_checkpoints import save_checkpoint

from theseus.experiments import JOBS, runs


@pytest.mark.slow
def test_a_finetune_on_a_small_text_validates_on_a_partial_batch(tmp_path):
    from pydoc_data.topics import topics

    text = tmp_path / "small.txt"
    text.write_text(" ".join(topics[k] for k in sorted(topics))[:35_000])  # a 35 kB text
    source = save_checkpoint(tmp_path / "base", "llama")
    overrides = {
        "architecture/huggingface/model": str(source),
        "data/source": str(text),
        "architecture/block_size": 64,
        "training/batch_size": 16,
        "training/tokens": 16 * 64 * 2,
        "data/validation_fraction": 0.02,
        "logging/validation_interval": 1,
        "logging/progress_bar": False,
        "logging/plot": False,
        "logging/peak_flops": 1e12,
        "topology/devices": 1,
    }
    fields, values = runs.configure("llama/train/finetune", overrides, require=True)
    runs.prepare_run_dir(tmp_path / "run", "llama/train/finetune", fields, values)
    job = JOBS["llama/train/finetune"](values, tmp_path / "run")
    validation = job.datasets(0).validation
    assert 0 < validation.rows < 16 and len(validation) == 1  # fewer windows than one batch holds
    result = job.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 3 and all(math.isfinite(v) for v in val)  # before training, after each of 2 steps
    assert result["val_loss"] == val[-1]
