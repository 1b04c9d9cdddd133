"""Jobs for the native GPT family."""

from theseus.evaluation.evaluator import BaseEvaluator
from theseus.model.models import GPT
from theseus.training import BaseTrainer, BaseTrainerConfig


class PretrainGPT(BaseTrainer[GPT]):
    """Pretrain a GPT from scratch (byte-level tokens, WSD, AdamW); offline by default."""

    MODEL = GPT
    CONFIG = BaseTrainerConfig


class EvaluateGPT(BaseEvaluator[GPT]):
    """Evaluate a GPT run's checkpoint (perplexity, multiple choice, exact match, lm-eval); writes results.json."""

    MODEL = GPT
