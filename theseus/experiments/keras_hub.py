"""keras-hub models as a model source: the `keras_hub/...` jobs.

`keras_hub/train/pretrain` trains a keras-hub causal-LM backbone (`theseus.model.keras_hub.KerasHubLM`)
from random weights: a backbone class and its config (`architecture/keras_hub/backbone` +
`architecture/keras_hub/config`), or a local preset's config (`architecture/keras_hub/preset`).
`keras_hub/train/finetune` starts from the preset's weights; `keras_hub/eval/evaluate` scores
them. `data/tokenizer: auto` is the preset's own tokenizer (`theseus.data.keras_hub`); a
backbone built from its config names one (a keras-hub tokenizer folder, a Hugging Face one, or
`byte`). Everything else is `BaseTrainer`'s: schedules, micro-batches, checkpoints and exact
resume, metrics, evaluations, sharding (`topology/strategy`, from the model's one layer table).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from theseus.base.sharding import build_abstractly
from theseus.config import ConfigError, build, field
from theseus.data import load_tokenizer
from theseus.evaluation.huggingface import HFEvaluator, HFEvaluatorConfig
from theseus.model.keras_hub import BACKBONE_KEY, PRESET_KEY, KerasHubLM
from theseus.training.checkpoint import digest
from theseus.training.data import check_vocabulary
from theseus.training.sources import ModelSource
from theseus.training.trainer import BaseTrainer, BaseTrainerConfig
from theseus.training.tuning import FineTuning

AUTO = "auto"
TOKENIZER_HELP = "auto = the preset's own tokenizer; a keras-hub or Hugging Face tokenizer folder; or byte"


@dataclasses.dataclass
class KerasHubTrainerConfig(BaseTrainerConfig):
    """Training a keras-hub backbone: random weights by default, the preset's tokenizer."""

    tokenizer: str = field("data/tokenizer", default=AUTO, help=TOKENIZER_HELP)
    init: Literal["random", "checkpoint"] = field(
        "training/init", default="random", help="random: new weights; checkpoint: the preset's weights"
    )


@dataclasses.dataclass
class KerasHubFinetuneConfig(KerasHubTrainerConfig):
    """Fine-tuning a keras-hub preset: from its weights, with a smaller learning rate."""

    init: Literal["random", "checkpoint"] = field(
        "training/init", default="checkpoint", help="random: new weights; checkpoint: the preset's weights"
    )
    lr: float = field("optimization/lr", default=1e-4, help="peak learning rate")


def tokenizer_folder(name: str, preset: str) -> str:
    """What `data/tokenizer` names for `load_tokenizer`: `auto` is the preset folder."""
    if name != AUTO:
        return name
    if not preset:
        raise ConfigError(
            f"data/tokenizer is auto but {BACKBONE_KEY} has no tokenizer: set data/tokenizer to a keras-hub "
            "tokenizer folder (tokenizer.save_to_preset), a Hugging Face tokenizer folder, or byte"
        )
    return preset


def check_tokenizer(tokenizer: Any, model: KerasHubLM) -> None:
    """A ConfigError when the backbone's embedding has fewer rows than the tokenizer has tokens."""
    try:
        check_vocabulary(tokenizer, model.vocab_size)
    except ConfigError as error:
        raise ConfigError(f"{error} (the keras-hub backbone's vocabulary_size)") from None


class KerasHubSource(ModelSource):
    """A `KerasHubLM` from the config, its weights (`training/init: checkpoint`) and its tokenizer,
    checked before anything runs: the backbone (built abstractly), the tokenizer's vocabulary."""

    def __init__(self, model_class: type, values: dict[str, Any], config: Any) -> None:
        super().__init__(model_class, values, config)
        if config.init == "checkpoint" and not values.get(PRESET_KEY):
            raise ConfigError(f"training/init=checkpoint needs {PRESET_KEY}: a backbone from its config has no weights")
        model = build_abstractly(lambda: self._model(pretrained=False))
        check_tokenizer(self.tokenizer(), model)
        positions = model.block_size
        if config.block_size > positions:
            raise ConfigError(
                f"architecture/block_size={config.block_size} exceeds the backbone's {positions} learned positions"
            )

    def _model(self, pretrained: bool) -> KerasHubLM:
        return build(self.model_class, self.values, pretrained=pretrained)

    def build(self) -> KerasHubLM:
        return self._model(pretrained=self.config.init == "checkpoint")

    def tokenizer(self) -> Any:
        return load_tokenizer(tokenizer_folder(self.config.tokenizer, self.values.get(PRESET_KEY, "")))

    def reference(self, seed: int) -> dict[str, Any]:
        if self.config.init != "checkpoint":
            return super().reference(seed)
        folder = Path(self.values[PRESET_KEY]).expanduser()
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return {"kind": "keras_hub", "path": str(folder.resolve()), "fingerprint": digest(files)[:16]}


class KerasHubTrainer(BaseTrainer[KerasHubLM]):
    """Pretrain a keras-hub causal-LM backbone with theseus's trainer (WSD, AdamW, exact resume)."""

    MODEL = KerasHubLM
    CONFIG: ClassVar[type] = KerasHubTrainerConfig

    def model_source(self) -> KerasHubSource:
        return KerasHubSource(self.MODEL, self.values, self.config)


class KerasHubFinetuner(KerasHubTrainer):
    """Fine-tune a keras-hub preset (all weights, or some) on chats or text."""

    CONFIG: ClassVar[type] = KerasHubFinetuneConfig
    TUNING: ClassVar[type] = FineTuning


@dataclasses.dataclass
class KerasHubEvaluatorConfig(HFEvaluatorConfig):
    """Evaluating a keras-hub preset: held-out text as a training job with these `data/...` reads it."""

    checkpoint: str = field(
        PRESET_KEY, help="a local keras-hub preset folder, or a Hugging Face folder keras-hub converts"
    )
    tokenizer: str = field("data/tokenizer", default=AUTO, help=TOKENIZER_HELP)


class KerasHubEvaluator(HFEvaluator[KerasHubLM]):
    """Loss and perplexity (and any `evaluation/tasks`) of a keras-hub preset's weights."""

    MODEL = KerasHubLM
    CONFIG: ClassVar[type] = KerasHubEvaluatorConfig

    def __init__(self, values: dict[str, Any], run_dir: Path | None = None) -> None:
        super(HFEvaluator, self).__init__(values, run_dir)  # HFEvaluator's checks are of a Hugging Face folder
        if self.config.batch_size < 1 or self.config.block_size < 1:
            raise ConfigError("evaluation/batch_size and architecture/block_size must be >= 1")
        model = build_abstractly(lambda: build(self.MODEL, self.values, pretrained=False))
        check_tokenizer(self.tokenizer(), model)
        self.config.check_sources()

    def tokenizer(self) -> Any:
        return load_tokenizer(tokenizer_folder(self.config.tokenizer, self.config.checkpoint))


KERAS_HUB_JOBS: dict[str, type] = {
    "keras_hub/train/pretrain": KerasHubTrainer,
    "keras_hub/train/finetune": KerasHubFinetuner,
    "keras_hub/eval/evaluate": KerasHubEvaluator,
}
