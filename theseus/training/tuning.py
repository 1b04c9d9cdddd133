"""What of the model a run trains, from which weights, on what data: the trainer's tuning part.

`Pretraining` trains every weight from the model source's start, on text, and
checkpoints the whole model. `FineTuning` (the `finetune/...` and `lora/...` keys) starts
from trained weights (the source's, or a theseus run's checkpoint: `finetune/init_from`),
freezes some of them or adds LoRA adapters, reads chats or text, checkpoints the
trainable part alone with a reference to its base (checked on resume), and merges the
adapters at the end (a LoRA-only fine-tune of a Hugging Face folder keeps them first, for
the PEFT adapter `RUN/peft`). A trainer calls its part at each step of a run; see `BaseTrainer`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import keras
from keras.src.backend.common.stateless_scope import in_stateless_scope

from theseus.config import ConfigError, build, field
from theseus.data.sft import ChatDataConfig
from theseus.training import checkpoint as ckpt
from theseus.training import lora
from theseus.training.config import BaseTrainerConfig
from theseus.training.data import Batches, chat_batches, text_batches
from theseus.training.export import ADAPTERS, HF_FOLDER
from theseus.training.folder import CHECKPOINTS
from theseus.training.sources import ModelSource

Weights = tuple[Callable[[Path], None] | None, Callable[[Path], None] | None]


@dataclasses.dataclass
class FinetuneConfig(lora.FreezeConfig):
    """Where a fine-tune starts and what it reads (besides `data/source` and `data/tokenizer`)."""

    init_from: str = field(
        "finetune/init_from",
        default="",
        help="a theseus run folder (its newest checkpoint) or RUN/checkpoints/step_N to start from; '' = the job's own base",
    )
    data: Literal["chat", "text"] = field(
        "finetune/data",
        default="text",
        help="chat: JSONL of {messages} or {prompt, response}, loss on the assistant's tokens; text: as pretraining",
    )


class Pretraining:
    """Every weight trains, from the source's start, on text; checkpoints hold the whole model."""

    CONFIGS: tuple[type, ...] = ()
    """The config sections this part reads, besides the trainer's."""

    def __init__(self, values: dict[str, Any], config: BaseTrainerConfig, source: ModelSource, job: str) -> None:
        """The part of the job named `job`, from its config `values` and the model's `source`."""

    def adapt(self, model: keras.Model) -> None:
        """Change the built model before training (load weights, freeze, add adapters)."""

    def checkpoint_weights(self, model: keras.Model) -> Weights:
        """How checkpoints write and read the weights file (each a function of its path);
        `(None, None)`: the whole model and optimizer, `model.save_weights` / `load_weights`."""
        return None, None

    def checkpoint_state(self) -> dict[str, Any]:
        """Fields this part adds to every checkpoint's `state.json`."""
        return {}

    def check_resumed(self, state: dict[str, Any]) -> None:
        """A ConfigError when the checkpoint a run resumes from does not fit this part."""

    def batches(
        self, config: BaseTrainerConfig, tokenizer: Any, total_steps: int, start_step: int, vocab_size: int | None
    ) -> Batches:
        return text_batches(config, tokenizer, total_steps, start_step, vocab_size)

    def finish(self, model: keras.Model) -> dict[str, Any]:
        """After training: leave `model` as it is exported and evaluated; what to add to the result."""
        return {}


class FineTuning(Pretraining):
    """Start from trained weights, train all of them, some (freezing) or LoRA adapters, on chats or text."""

    CONFIGS = (FinetuneConfig, ChatDataConfig, lora.LoraConfig)
    NEEDS_RUN = False
    """Whether `finetune/init_from` must name the run to start from (the source has no trained weights)."""

    def __init__(self, values: dict[str, Any], config: BaseTrainerConfig, source: ModelSource, job: str) -> None:
        self.finetune, self.chat, self.lora = (build(c, values) for c in self.CONFIGS)
        self.start = run_checkpoint(self.finetune.init_from) if self.finetune.init_from else None
        if self.NEEDS_RUN and self.start is None:
            raise ConfigError(
                f"{job} starts from trained weights: set finetune/init_from to a run folder or RUN/checkpoints/step_N"
            )
        self.base = checkpoint_reference(self.start) if self.start is not None else source.reference(config.seed)
        self.peft_base = self._peft_base(source)

    def _peft_base(self, source: ModelSource) -> str | None:
        """The Hugging Face folder a PEFT adapter of this run goes over (`RUN/peft`): the source's
        (a PEFT adapter source's base, that adapter then stacked with the run's); None when the
        run trains more than adapters or starts from a theseus run (`RUN/hf` is the one export)."""
        extra = self.finetune.train_last_blocks or self.finetune.trainable
        if not self.lora.enabled or extra or self.base.get("kind") != "huggingface":
            return None
        return str(source.checkpoint.folder.resolve())

    @property
    def partial_checkpoints(self) -> bool:
        """Whether checkpoints hold the trainable weights alone (the rest is the base's)."""
        return self.lora.enabled or bool(self.finetune.train_last_blocks or self.finetune.trainable)

    def adapt(self, model: keras.Model) -> None:
        if self.start is not None and not in_stateless_scope():  # an abstract build loads nothing
            model.load_weights(self.start.path / ckpt.MODEL_FILE)  # weights only: a new optimizer
        lora.freeze(model, self.finetune.train_last_blocks, self.finetune.trainable)
        if self.lora.enabled:
            chosen = self.finetune.train_last_blocks or self.finetune.trainable
            also = [v for v in model.weights if v.trainable] if chosen else []
            lora.enable_lora(model, self.lora.rank, self.lora.alpha, self.lora.targets)
            for variable in also:  # freezing options add to the adapters
                variable.trainable = True

    def checkpoint_weights(self, model: keras.Model) -> Weights:
        if not self.partial_checkpoints:
            return None, None
        return partial(lora.save_trainable, model), partial(lora.load_trainable, model)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"base": self.base}

    def check_resumed(self, state: dict[str, Any]) -> None:
        saved = state.get("base")
        if saved is not None and saved.get("fingerprint") != self.base.get("fingerprint"):
            raise ConfigError(
                f"the run's checkpoints were trained on base {saved.get('path', saved)} (fingerprint "
                f"{saved.get('fingerprint')}) but its base is now {self.base.get('path')} ({self.base.get('fingerprint')})"
            )

    def batches(
        self, config: BaseTrainerConfig, tokenizer: Any, total_steps: int, start_step: int, vocab_size: int | None
    ) -> Batches:
        if self.finetune.data == "text":
            return super().batches(config, tokenizer, total_steps, start_step, vocab_size)
        return chat_batches(config, self.chat, tokenizer, total_steps, start_step)

    def finish(self, model: keras.Model) -> dict[str, Any]:
        summary = lora.trainable_summary(model)
        if self.peft_base is not None:  # RUN/peft: the adapters, read before they are merged
            setattr(model, ADAPTERS, lora.adapters(model, self.peft_base))
        merged = lora.merge_lora(model)  # export and evaluation see one plain model
        return {"trainable_parameters": summary["trainable"], "parameters": summary["total"], "merged_layers": merged}


def run_checkpoint(source: str) -> ckpt.Checkpoint:
    """The checkpoint `finetune/init_from` names: a run's newest, or one step folder."""
    path = Path(source).expanduser()
    if (path / ckpt.MODEL_FILE).is_file():
        try:
            checkpoint = ckpt.Checkpoint(path, int(path.name.split("_", 1)[1]))
        except (IndexError, ValueError):
            raise ConfigError(f"finetune/init_from: {path} is not named like a checkpoint (step_N)") from None
    else:
        checkpoint = ckpt.latest(path / CHECKPOINTS)
        if checkpoint is None:
            raise ConfigError(
                f"finetune/init_from: {path} is neither a run folder with a complete checkpoint nor a checkpoint folder"
            )
    try:
        ckpt.verify(checkpoint.path)
    except ckpt.CheckpointError as error:
        raise ConfigError(f"finetune/init_from: {error}") from None
    if lora.is_trainable_file(checkpoint.path / ckpt.MODEL_FILE):
        raise ConfigError(
            f"finetune/init_from: {checkpoint.path} holds only the trainable part of a fine-tune; "
            f"start from that run's merged export ({HF_FOLDER}/) instead"
        )
    return checkpoint


def checkpoint_reference(checkpoint: ckpt.Checkpoint) -> dict[str, Any]:
    """A run checkpoint as a fine-tune's base: its path and a fingerprint of its weights."""
    manifest = json.loads((checkpoint.path / ckpt.MANIFEST_FILE).read_text())
    return {
        "kind": "checkpoint",
        "path": str(checkpoint.path.resolve()),
        "fingerprint": manifest[ckpt.MODEL_FILE]["sha256"][:16],
    }


class FineTuningFromRun(FineTuning):
    """`FineTuning` of a model whose source has no trained weights (a native family): from a theseus run."""

    NEEDS_RUN = True
