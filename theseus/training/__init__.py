"""Training: `BaseTrainer` on `model.fit`, schedules, optimizers, checkpoints and callbacks."""

from theseus.training.config import BaseTrainerConfig
from theseus.training.schedules import SCHEDULES, WSD, Constant, Cosine, build_schedule
from theseus.training.trainer import BaseTrainer

__all__ = ["SCHEDULES", "WSD", "BaseTrainer", "BaseTrainerConfig", "Constant", "Cosine", "build_schedule"]
