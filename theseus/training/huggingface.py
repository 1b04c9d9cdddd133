"""`HFTrainer`: train a model in Hugging Face format, from its config.json or its weights.

The model (`HFCompat` or a subclass) names its folder in `architecture/huggingface/model`.
`training/init` picks random initialisation (pretraining from the architecture) or the
checkpoint's weights (fine-tuning); `data/tokenizer: auto` uses the folder's own tokenizer.
Everything else is `BaseTrainer`: the same data pipeline, schedules, checkpoints and resume;
only the model source differs (`theseus.training.sources.HFFolder`). At the end the trained
model is written back as a Hugging Face folder, `RUN/hf`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal, TypeVar

from theseus.config import field
from theseus.model.huggingface import AUTO, HFCheckpoint, HFCompat
from theseus.training.sources import HFFolder
from theseus.training.trainer import BaseTrainer, BaseTrainerConfig

M = TypeVar("M", bound=HFCompat)


@dataclasses.dataclass
class HFTrainerConfig(BaseTrainerConfig):
    """A pretraining job on a Hugging Face architecture: random weights, the folder's tokenizer."""

    tokenizer: str = field(
        "data/tokenizer", default=AUTO, help="auto = the model folder's tokenizer; byte; or a tokenizer folder"
    )
    init: Literal["random", "checkpoint"] = field(
        "training/init",
        default="random",
        help="random: from config.json alone (pretraining); checkpoint: from the folder's weights",
    )
    export: bool = field(
        "training/export", default=True, help="write the trained model as a Hugging Face folder, RUN/hf"
    )


@dataclasses.dataclass
class HFFinetuneConfig(HFTrainerConfig):
    """A fine-tuning job: starts from the checkpoint's weights, with a smaller learning rate."""

    init: Literal["random", "checkpoint"] = field(
        "training/init",
        default="checkpoint",
        help="random: from config.json alone (pretraining); checkpoint: from the folder's weights",
    )
    lr: float = field("optimization/lr", default=1e-4, help="peak learning rate")


class HFTrainer(BaseTrainer[M]):
    """Train a Hugging Face-format model (`HFCompat`) with `model.fit` and export it back."""

    CONFIG: ClassVar[type] = HFTrainerConfig
    MODEL_TYPES: ClassVar[tuple[str, ...]] = ()
    """config.json `model_type`s this job accepts; empty = every supported one."""

    def model_source(self) -> HFFolder:
        return HFFolder(self.MODEL, self.values, self.config, self.MODEL_TYPES, type(self).__name__)

    @property
    def checkpoint(self) -> HFCheckpoint:
        """The Hugging Face folder the model comes from."""
        return self.source.checkpoint

    def exports(self) -> bool:
        return self.config.export
