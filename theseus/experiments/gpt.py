"""Jobs for the native GPT family."""

from theseus.experiments.sources import RunEvaluator
from theseus.model.models import GPT
from theseus.training import BaseTrainer, BaseTrainerConfig
from theseus.training.finetune import NativeFinetuner


class PretrainGPT(BaseTrainer[GPT]):
    """Pretrain a GPT from scratch (byte-level tokens, WSD, AdamW); offline by default."""

    MODEL = GPT
    CONFIG = BaseTrainerConfig


class FinetuneGPT(NativeFinetuner[GPT]):
    """Fine-tune a GPT run's checkpoint on chats or text (all weights, some, or LoRA); writes RUN/hf."""

    MODEL = GPT
    CONFIG = BaseTrainerConfig


class EvaluateGPT(RunEvaluator[GPT]):
    """Evaluate a GPT run's checkpoint (perplexity, multiple choice, exact match, lm-eval); writes results.json."""

    MODEL = GPT
