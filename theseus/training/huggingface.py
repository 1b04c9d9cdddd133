"""`HFTrainer`: train a model in Hugging Face format, from its config.json or its weights.

The model (`HFCompat` or a subclass) names its folder in `architecture/huggingface/model`.
`training/init` picks random initialisation (pretraining from the architecture) or the
checkpoint's weights (fine-tuning); `data/tokenizer: auto` uses the folder's own tokenizer.
Everything else is `BaseTrainer`: the same data pipeline, schedules, checkpoints and resume.
At the end the trained model is written back as a Hugging Face folder, `RUN/hf`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, TypeVar

from theseus.base import multihost
from theseus.config import ConfigError, field
from theseus.data import load_tokenizer
from theseus.model.huggingface import KEY, HFCheckpoint, HFCompat, random_init, save_hf
from theseus.training.trainer import BaseTrainer, BaseTrainerConfig

M = TypeVar("M", bound=HFCompat)
AUTO = "auto"


@dataclasses.dataclass
class HFTrainerConfig(BaseTrainerConfig):
    """A pretraining job on a Hugging Face architecture: random weights, the folder's tokenizer."""

    tokenizer: str = field("data/tokenizer", default=AUTO, help="auto = the model folder's tokenizer; byte; or a tokenizer folder")
    init: Literal["random", "checkpoint"] = field("training/init", default="random", help="random: from config.json alone (pretraining); checkpoint: from the folder's weights")
    export: bool = field("training/export", default=True, help="write the trained model as a Hugging Face folder, RUN/hf")


@dataclasses.dataclass
class HFFinetuneConfig(HFTrainerConfig):
    """A fine-tuning job: starts from the checkpoint's weights, with a smaller learning rate."""

    init: Literal["random", "checkpoint"] = field("training/init", default="checkpoint", help="random: from config.json alone (pretraining); checkpoint: from the folder's weights")
    lr: float = field("optimization/lr", default=1e-4, help="peak learning rate")


def open_checkpoint(model_id: str, model_types: tuple[str, ...] = (), job: str = "this job") -> HFCheckpoint:
    """The checkpoint `model_id` names, refused (ConfigError) unless its family is one of `model_types`."""
    checkpoint = HFCheckpoint(model_id)
    if model_types and checkpoint.model_type not in model_types:
        raise ConfigError(
            f"{KEY}: {checkpoint.folder} holds a {checkpoint.model_type} model but {job} takes "
            f"{' or '.join(model_types)}; use the {checkpoint.model_type}/... jobs"
        )
    return checkpoint


def hf_tokenizer(name: str, checkpoint: HFCheckpoint):
    """The tokenizer `data/tokenizer` names; `auto` is the checkpoint folder's own."""
    if name == AUTO:
        if not checkpoint.tokenizer_files():
            raise ConfigError(
                f"data/tokenizer is auto but {checkpoint.folder} has no tokenizer files; "
                "set data.tokenizer to byte or to a tokenizer folder"
            )
        name = str(checkpoint.folder)
    try:
        return load_tokenizer(name)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data/tokenizer: {error}") from None


def check_vocabulary(tokenizer: Any, checkpoint: HFCheckpoint) -> None:
    vocab = checkpoint.kwargs["vocab_size"]
    if tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"data/tokenizer has {tokenizer.vocab_size} tokens but the model in {checkpoint.folder} "
            f"has {vocab} embedding rows; use its own tokenizer (data.tokenizer=auto) or a smaller one"
        )


class HFTrainer(BaseTrainer[M]):
    """Train a Hugging Face-format model (`HFCompat`) with `model.fit` and export it back."""

    CONFIG: ClassVar[type] = HFTrainerConfig
    MODEL_TYPES: ClassVar[tuple[str, ...]] = ()
    """config.json `model_type`s this job accepts; empty = every supported one."""

    def __init__(self, values: dict[str, Any], run_dir: Optional[Path] = None) -> None:
        super().__init__(values, run_dir)
        self.checkpoint = open_checkpoint(values[KEY], self.MODEL_TYPES, type(self).__name__)
        if self.config.init == "checkpoint":
            self.checkpoint.plan()  # every weight present, with the right shape: checked from the headers
        positions = self.checkpoint.kwargs["block_size"]
        if self.checkpoint.kwargs.get("position") == "learned" and self.config.block_size > positions:
            raise ConfigError(
                f"architecture/block_size={self.config.block_size} exceeds the {positions} learned "
                f"positions of the {self.checkpoint.model_type} model in {self.checkpoint.folder}"
            )
        check_vocabulary(self.tokenizer(), self.checkpoint)

    def tokenizer(self):
        return hf_tokenizer(self.config.tokenizer, self.checkpoint)

    def build_model(self) -> M:
        if self.config.init == "checkpoint":
            return super().build_model()
        with random_init():
            return super().build_model()

    def run(self) -> dict[str, Any]:
        result = super().run()
        model = getattr(self, "model", None)
        if self.config.export and self.run_dir is not None and model is not None:
            with multihost.gathered(model.weights):  # multi-host: all gather the sharded weights, 0 writes
                if multihost.is_primary():
                    folder = save_hf(model, self.run_dir / "hf", tokenizer=self.export_tokenizer(), overwrite=True)
                    print(f"Hugging Face folder: {folder}", flush=True)
                    result["hf_folder"] = str(folder)
        return result

    def export_tokenizer(self) -> Any:
        """The tokenizer the model was trained with, for `save_hf` (False: not a Hugging Face one)."""
        if self.config.tokenizer == AUTO:
            return self.checkpoint.folder
        tokenizer = self.tokenizer()
        return tokenizer if hasattr(tokenizer, "tokenizer") else False
