"""The trained model as a Hugging Face folder, `RUN/hf`: the one export after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from theseus.base import multihost
from theseus.model.huggingface import save_hf

HF_FOLDER = "hf"


def export_hf(model: keras.Model, run_dir: Path, tokenizer: Any) -> Path | None:
    """Write `model` (and `tokenizer`, as `save_hf` takes it) to `run_dir/hf`; its path.

    Every host takes part in gathering the sharded weights; process 0 alone writes, and
    alone gets the folder back (None elsewhere).
    """
    with multihost.gathered(model.weights):
        if not multihost.is_primary():
            return None
        folder = save_hf(model, Path(run_dir) / HF_FOLDER, tokenizer=tokenizer, overwrite=True)
    print(f"Hugging Face folder: {folder}", flush=True)
    return folder
