"""Fine-tuning: pretraining's trainer, started from trained weights, on chats or text,
training all weights, some of them (`finetune/...`) or LoRA adapters (`lora/...`).

The base is a Hugging Face folder (`architecture/huggingface/model`, the HF families'
jobs) or a theseus run or checkpoint (`finetune/init_from`, any job). `finetune/data:
chat` reads chat JSONL rendered with the tokenizer's chat template, loss on the
assistant's tokens only (`theseus.data.sft`); `text` is pretraining's data path.
Schedules, checkpoints, resume and evaluation are the pretraining ones, except that a
run which trains part of its model checkpoints that part alone, with a reference to its
base (path and fingerprint) that resuming checks. At the end the adapters are merged
and the model is written as a Hugging Face folder, `RUN/hf`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, TypeVar

import keras
from keras.src.backend.common.stateless_scope import in_stateless_scope

from theseus.base import multihost
from theseus.config import ConfigError, build, field
from theseus.data.sft import ChatDataConfig, chat_datasets
from theseus.model.huggingface import HFCompat, save_hf
from theseus.model.module import Module
from theseus.training import checkpoint as ckpt
from theseus.training import lora
from theseus.training.callbacks import Checkpointer
from theseus.training.huggingface import HFTrainer
from theseus.training.trainer import CHECKPOINTS, BaseTrainer

M = TypeVar("M", bound=Module)
HF_FOLDER = "hf"


@dataclasses.dataclass
class FinetuneConfig(lora.FreezeConfig):
    """Where a fine-tune starts and what it reads (besides `data/source` and `data/tokenizer`)."""

    init_from: str = field(
        "finetune/init_from", default="",
        help="a theseus run folder (its newest checkpoint) or RUN/checkpoints/step_N to start from; '' = the job's own base",
    )
    data: Literal["chat", "text"] = field(
        "finetune/data", default="text",
        help="chat: JSONL of {messages} or {prompt, response}, loss on the assistant's tokens; text: as pretraining",
    )


def file_digest(paths: list[Path]) -> str:
    """SHA-256 over the bytes of `paths`, in order (16 hex digits)."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()[:16]


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
            raise ConfigError(f"finetune/init_from: {path} is neither a run folder with a complete checkpoint nor a checkpoint folder")
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


class Finetuner(BaseTrainer[M]):
    """`BaseTrainer` from a trained base, on chats or text, with freezing and LoRA."""

    @classmethod
    def components(cls) -> list[type]:
        return [*super().components(), FinetuneConfig, ChatDataConfig, lora.LoraConfig]

    def __init__(self, values: dict[str, Any], run_dir: Optional[Path] = None) -> None:
        # before the base class's checks, which may build the model (a sharded topology's layout)
        self.finetune = build(FinetuneConfig, values)
        self.chat = build(ChatDataConfig, values)
        self.lora = build(lora.LoraConfig, values)
        self.init_checkpoint = run_checkpoint(self.finetune.init_from) if self.finetune.init_from else None
        super().__init__(values, run_dir)
        self.base = self.base_reference()

    def base_reference(self) -> dict[str, Any]:
        """What the run starts from, saved in its checkpoints: a path and a fingerprint of its weights."""
        if self.init_checkpoint is not None:
            manifest = json.loads((self.init_checkpoint.path / ckpt.MANIFEST_FILE).read_text())
            return {"kind": "checkpoint", "path": str(self.init_checkpoint.path.resolve()),
                    "fingerprint": manifest[ckpt.MODEL_FILE]["sha256"][:16]}
        return {"kind": "random", "seed": self.config.seed}

    @property
    def partial_checkpoints(self) -> bool:
        """Whether checkpoints hold the trainable weights alone (the rest is the base's)."""
        return self.lora.enabled or bool(self.finetune.train_last_blocks or self.finetune.trainable)

    def build_model(self) -> M:
        """The base model with its trained weights, then frozen and given adapters as configured."""
        model = super().build_model()
        if self.init_checkpoint is not None and not in_stateless_scope():  # an abstract build loads nothing
            model.load_weights(self.init_checkpoint.path / ckpt.MODEL_FILE)  # weights only: a new optimizer
        lora.freeze(model, self.finetune.train_last_blocks, self.finetune.trainable)
        if self.lora.enabled:
            chosen = self.finetune.train_last_blocks or self.finetune.trainable
            also = [v for v in model.weights if v.trainable] if chosen else []
            lora.enable_lora(model, self.lora.rank, self.lora.alpha, self.lora.targets)
            for variable in also:  # freezing options add to the adapters
                variable.trainable = True
        return model

    def checkpoint_weights(self, model: M) -> tuple[Any, Any]:
        if not self.partial_checkpoints:
            return None, None
        return partial(lora.save_trainable, model), partial(lora.load_trainable, model)

    def callbacks(self, start_step: int, validation, schedule, resumed: dict[str, Any]) -> list[keras.callbacks.Callback]:
        callbacks = super().callbacks(start_step, validation, schedule, resumed)
        for callback in callbacks:
            if isinstance(callback, Checkpointer):
                callback.state["base"] = self.base
        return callbacks

    def resume(self, model: M) -> dict[str, Any]:
        state = super().resume(model)
        saved = state.get("base")
        if saved is not None and saved.get("fingerprint") != self.base.get("fingerprint"):
            raise ConfigError(
                f"the run's checkpoints were trained on base {saved.get('path', saved)} (fingerprint "
                f"{saved.get('fingerprint')}) but its base is now {self.base.get('path')} ({self.base.get('fingerprint')})"
            )
        return state

    def datasets(self, start_step: int):
        """Pretraining's data for `finetune/data: text`; for `chat`, chat rows, loss on the assistant's tokens."""
        if self.finetune.data == "text":
            return super().datasets(start_step)
        cfg = self.config
        source = Path(cfg.source).expanduser()
        identity = file_digest([source]) if source.is_file() else cfg.source  # a missing file: chat_datasets says so
        key = f"{identity}|{self.chat.packing}|{cfg.validation_fraction}|{cfg.block_size}"
        self.data_fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        if start_step and self.run_dir is not None:
            state = ckpt.step_dir(self.run_dir / CHECKPOINTS, start_step) / ckpt.STATE_FILE
            saved = json.loads(state.read_text()).get("data") if state.is_file() else None
            if saved not in (None, self.data_fingerprint):
                raise ConfigError(f"data: the chats differ from those of the checkpoint at step {start_step}: resuming would not continue its batches")
        return chat_datasets(
            cfg.source, self.tokenizer(), cfg.block_size, cfg.batch_size, self.total_steps - start_step,
            seed=cfg.seed, start_step=start_step, packing=self.chat.packing,
            validation_fraction=cfg.validation_fraction, validation_batches=cfg.validation_batches,
        )

    def _run(self) -> dict[str, Any]:
        result = super()._run()
        summary = lora.trainable_summary(self.model)
        result.update(trainable_parameters=summary["trainable"], parameters=summary["total"])
        result["merged_layers"] = lora.merge_lora(self.model)  # export and evaluation see one plain model
        return result


class NativeFinetuner(Finetuner[M]):
    """Fine-tune a native family (GPT, Llama) from a theseus run; writes `RUN/hf`."""

    def __init__(self, values: dict[str, Any], run_dir: Optional[Path] = None) -> None:
        super().__init__(values, run_dir)
        if self.init_checkpoint is None:
            raise ConfigError(f"{type(self).__name__} starts from trained weights: set finetune/init_from to a run folder or RUN/checkpoints/step_N")

    def run(self) -> dict[str, Any]:
        result = super().run()
        model = getattr(self, "model", None)
        if self.run_dir is not None and model is not None and multihost.is_primary():
            tokenizer = self.tokenizer()
            folder = save_hf(model, self.run_dir / HF_FOLDER, tokenizer=tokenizer if hasattr(tokenizer, "tokenizer") else False, overwrite=True)
            print(f"Hugging Face folder: {folder}", flush=True)
            result["hf_folder"] = str(folder)
        return result


class HFFinetuner(Finetuner[M], HFTrainer[M]):
    """Fine-tune a Hugging Face-format model (`HFCompat`): its folder is the base, unless
    `finetune/init_from` names a run of the same job; writes `RUN/hf` (merged)."""

    MODEL: ClassVar[type] = HFCompat

    def base_reference(self) -> dict[str, Any]:
        if self.init_checkpoint is not None or self.config.init != "checkpoint":
            return super().base_reference()
        folder = self.checkpoint.folder
        files = sorted(folder.glob("*.safetensors"))
        return {"kind": "huggingface", "path": str(folder.resolve()), "fingerprint": file_digest(files)}
