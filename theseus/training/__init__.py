"""Training: `BaseTrainer` on `model.fit`, schedules, optimizers, checkpoints and callbacks."""

from theseus.training.schedules import SCHEDULES, WSD, Constant, Cosine, build_schedule
from theseus.training.trainer import BaseTrainer, BaseTrainerConfig

__all__ = ["SCHEDULES", "WSD", "BaseTrainer", "BaseTrainerConfig", "Constant", "Cosine", "build_schedule"]
