"""Fine-tuning jobs: pretraining's trainer with the `FineTuning` part, on chats or text,
training all weights, some of them (`finetune/...`) or LoRA adapters (`lora/...`).

The base is a Hugging Face folder (`architecture/huggingface/model`, the HF families'
jobs) or a theseus run or checkpoint (`finetune/init_from`, any job). `finetune/data:
chat` reads chat JSONL rendered with the tokenizer's chat template, loss on the
assistant's tokens only (`theseus.data.sft`); `text` is pretraining's data path.
Schedules, checkpoints, resume and evaluation are the pretraining ones, except that a
run which trains part of its model checkpoints that part alone, with a reference to its
base (path and fingerprint) that resuming checks (`theseus.training.tuning`). At the end
the adapters are merged and the model is written as a Hugging Face folder, `RUN/hf`.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from theseus.model.huggingface import HFCompat
from theseus.model.module import Module
from theseus.training.huggingface import HFTrainer
from theseus.training.trainer import BaseTrainer
from theseus.training.tuning import FineTuning, FineTuningFromRun

M = TypeVar("M", bound=Module)


class NativeFinetuner(BaseTrainer[M]):
    """Fine-tune a native family (GPT, Llama) from a theseus run (`finetune/init_from`); writes `RUN/hf`."""

    TUNING: ClassVar[type] = FineTuningFromRun

    def exports(self) -> bool:
        return True


class HFFinetuner(HFTrainer[M]):
    """Fine-tune a Hugging Face-format model (`HFCompat`): its folder is the base, unless
    `finetune/init_from` names a run of the same job; writes `RUN/hf` (merged)."""

    MODEL: ClassVar[type] = HFCompat
    TUNING: ClassVar[type] = FineTuning
