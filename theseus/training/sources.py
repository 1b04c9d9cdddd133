"""Where a trainer's model starts: how it is built, its tokenizer, and what it is based on.

`ModelSource` builds the job's `MODEL` from the config (random weights) and tokenizes
with `data/tokenizer`. `HFFolder` builds it from a Hugging Face folder
(`architecture/huggingface/model`): its config.json, and its weights when `training/init:
checkpoint`; `data/tokenizer: auto` is the folder's own tokenizer.
"""

from __future__ import annotations

from typing import Any

from theseus.config import ConfigError, build
from theseus.data import load_tokenizer
from theseus.model.huggingface import AUTO, KEY, check_vocabulary, open_checkpoint, random_init, tokenizer_name
from theseus.model.models.causal_lm import as_causal_lm
from theseus.model.module import Module
from theseus.training.checkpoint import digest


class ModelSource:
    """`model_class` built from the config `values`, with random weights."""

    def __init__(self, model_class: type, values: dict[str, Any], config: Any) -> None:
        self.model_class, self.values, self.config = model_class, values, config

    def build(self) -> Module:
        """The model, built on `architecture/block_size` tokens, with its starting weights."""
        model = as_causal_lm(build(self.model_class, self.values))
        model.build((None, self.config.block_size))
        return model

    def tokenizer(self) -> Any:
        """The tokenizer `data/tokenizer` names (a ConfigError if there is none)."""
        return load_tokenizer(self.config.tokenizer)

    def export_tokenizer(self) -> Any:
        """The tokenizer for `save_hf` to write beside the model (False: not a Hugging Face one)."""
        tokenizer = self.tokenizer()
        return tokenizer if hasattr(tokenizer, "tokenizer") else False

    def reference(self, seed: int) -> dict[str, Any]:
        """The start of training, as a fine-tune's checkpoints record their base."""
        return {"kind": "random", "seed": seed}


class HFFolder(ModelSource):
    """The Hugging Face folder `architecture/huggingface/model`, checked before anything runs:
    its family (one of `model_types`, if any), its weights (with `training/init: checkpoint`),
    its positions against `architecture/block_size` and its vocabulary against the tokenizer."""

    def __init__(
        self, model_class: type, values: dict[str, Any], config: Any, model_types: tuple[str, ...], job: str
    ) -> None:
        super().__init__(model_class, values, config)
        self.checkpoint = open_checkpoint(values[KEY], model_types, job)
        if config.init == "checkpoint":
            self.checkpoint.plan()  # every weight present, with the right shape: checked from the headers
        positions = self.checkpoint.kwargs["block_size"]
        if self.checkpoint.kwargs.get("position") == "learned" and config.block_size > positions:
            raise ConfigError(
                f"architecture/block_size={config.block_size} exceeds the {positions} learned "
                f"positions of the {self.checkpoint.model_type} model in {self.checkpoint.folder}"
            )
        check_vocabulary(self.tokenizer(), self.checkpoint)

    def build(self) -> Module:
        if self.config.init == "checkpoint":
            return super().build()
        with random_init():
            return super().build()

    def tokenizer(self) -> Any:
        return load_tokenizer(tokenizer_name(self.config.tokenizer, self.checkpoint))

    def export_tokenizer(self) -> Any:
        return self.checkpoint.folder if self.config.tokenizer == AUTO else super().export_tokenizer()

    def reference(self, seed: int) -> dict[str, Any]:
        if self.config.init != "checkpoint":
            return super().reference(seed)
        folder = self.checkpoint.folder
        files = sorted(self.checkpoint.sources())  # a PEFT adapter's file included
        return {"kind": "huggingface", "path": str(folder.resolve()), "fingerprint": digest(files)[:16]}
