"""Jobs for the native GPT family."""

from theseus.model.models import GPT
from theseus.training import BaseTrainer, BaseTrainerConfig


class PretrainGPT(BaseTrainer[GPT]):
    """Pretrain a GPT from scratch (byte-level tokens, WSD, AdamW); offline by default."""

    MODEL = GPT
    CONFIG = BaseTrainerConfig
