"""The trained model as a Hugging Face folder, `RUN/hf`: the one export after a run; and,
after a LoRA fine-tune of a Hugging Face folder, its adapters as a PEFT folder, `RUN/peft`.
`export` writes a model to a folder of a chosen kind (`theseus export RUN --to hf|keras-hub OUT`):
a Hugging Face folder, or a keras-hub preset that `keras_hub.models.CausalLM.from_preset` loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from theseus.base import multihost
from theseus.config import ConfigError
from theseus.model.convert.keras_hub import save_keras_hub
from theseus.model.huggingface import save_hf, save_peft

HF_FOLDER = "hf"
PEFT_FOLDER = "peft"
ADAPTERS = "merged_lora"
"""The model attribute where a fine-tune leaves the `lora.Adapters` it merged, for `RUN/peft`."""


def export_hf(model: keras.Model, run_dir: Path, tokenizer: Any) -> Path | None:
    """Write `model` (and `tokenizer`, as `save_hf` takes it) to `run_dir/hf`; its path.
    When the model carries the LoRA adapters merged into it (`ADAPTERS`), write them to
    `run_dir/peft` too.

    Every host takes part in gathering the sharded weights; process 0 alone writes, and
    alone gets the folder back (None elsewhere).
    """
    with multihost.gathered(model.weights):
        if not multihost.is_primary():
            return None
        folder = save_hf(model, Path(run_dir) / HF_FOLDER, tokenizer=tokenizer, overwrite=True)
    print(f"Hugging Face folder: {folder}", flush=True)
    adapters = getattr(model, ADAPTERS, None)
    if adapters is not None:
        peft = save_peft(
            model, Path(run_dir) / PEFT_FOLDER, adapters.weights, adapters.rank, adapters.alpha, adapters.base
        )
        print(f"PEFT adapter (over {adapters.base}): {peft}", flush=True)
    return folder


TARGETS: dict[str, Callable[..., Path]] = {
    "hf": lambda model, folder, tokenizer, overwrite: save_hf(
        model, folder, tokenizer=tokenizer if hasattr(tokenizer, "tokenizer") else False, overwrite=overwrite
    ),
    "keras-hub": save_keras_hub,
}
"""Export targets: name -> `write(model, folder, tokenizer, overwrite)` (a ConfigError for what it cannot express)."""


def check_target(target: str) -> None:
    """A ConfigError unless `target` names an export in `TARGETS`."""
    if target not in TARGETS:
        raise ConfigError(f"--to: unknown export target {target!r}; choose one of: {', '.join(TARGETS)}")


def export(model: keras.Model, tokenizer: Any, target: str, folder: str | Path, overwrite: bool = False) -> Path | None:
    """Write `model` and `tokenizer` (theseus's) to `folder` as `target` (a key of `TARGETS`);
    its path on process 0, None elsewhere (every host gathers the sharded weights)."""
    check_target(target)
    with multihost.gathered(model.weights):
        if not multihost.is_primary():
            return None
        return TARGETS[target](model, Path(folder), tokenizer, overwrite)
