"""`BaseTrainer`: build the model and data from config, compile, `model.fit`, with callbacks.

A trainer is a job: its `components()` (its `CONFIG` dataclass and its `MODEL`) define
the YAML a user edits; `schedule()` and `optimizer()` are the two things a subclass
usually changes. Everything else (validation, metrics, checkpoints, resume) is a Keras
callback or a plain step here, the same for every model family.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Generic, Optional, TypeVar, Union

import keras
import numpy as np

from theseus.config import ConfigError, build, field
from theseus.data import TokenWindows, ValidationWindows, load_tokenizer, read_text_source, split_tokens
from theseus.model.models.causal_lm import as_causal_lm
from theseus.model.module import Module
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import Checkpointer, MetricsLogger, Validation, truncate_metrics
from theseus.training.optimizers import build_optimizer
from theseus.training.schedules import build_schedule

M = TypeVar("M", bound=Module)


@dataclasses.dataclass
class BaseTrainerConfig:
    """What every pretraining job reads besides its model's architecture."""

    tokens: int = field("training/tokens", default=1_000_000, help="training tokens; steps = tokens // (batch_size * block_size)")
    batch_size: int = field("training/batch_size", default=16, help="sequences per optimizer step (global batch)")
    block_size: int = field("architecture/block_size", default=256, help="context length in tokens")
    seed: int = field("training/seed", default=0, help="seed of initialisation, dropout and data order")
    jit_compile: Union[bool, str] = field("training/jit_compile", default="auto", help="Keras jit_compile: auto, true or false")

    lr: float = field("optimization/lr", default=2e-3, help="peak learning rate")
    warmup: Union[int, float] = field("optimization/warmup", default=0.05, help="warmup: fraction of steps (<= 1.0) or steps")
    decay: Union[int, float] = field("optimization/decay", default=0.2, help="WSD decay: fraction of steps (<= 1.0) or steps")
    decay_shape: str = field("optimization/decay_shape", default="1-sqrt", help="WSD decay shape: linear, cosine or 1-sqrt")
    final_lr_fraction: float = field("optimization/final_lr_fraction", default=0.0, help="final lr / peak lr")
    weight_decay: float = field("optimization/weight_decay", default=0.1, help="AdamW decoupled weight decay")
    beta_1: float = field("optimization/beta_1", default=0.9, help="Adam beta 1")
    beta_2: float = field("optimization/beta_2", default=0.95, help="Adam beta 2")
    clip_norm: float = field("optimization/clip_norm", default=1.0, help="global gradient-norm clip; 0 = off")

    source: str = field("data/source", default="embedded", help="'embedded' (Python's own docs), a text file or a folder")
    tokenizer: str = field("data/tokenizer", default="byte", help="tokenizer name")
    validation_fraction: float = field("data/validation_fraction", default=0.05, help="share of windows held out")

    log_interval: int = field("logging/log_interval", default=10, help="steps between metrics rows")
    validation_interval: int = field("logging/validation_interval", default=100, help="steps between validations")
    validation_batches: int = field("logging/validation_batches", default=20, help="batches per validation (fixed set)")
    checkpoint_interval: int = field("logging/checkpoint_interval", default=200, help="steps between checkpoints")
    keep_checkpoints: int = field("logging/keep_checkpoints", default=3, help="recent checkpoints kept; 0 = all")
    progress_bar: bool = field("logging/progress_bar", default=True, help="show Keras's progress bar")


class BaseTrainer(Generic[M]):
    """Pretrain `MODEL` with `model.fit` (WSD schedule, AdamW) on the configured text."""

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type] = BaseTrainerConfig

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG, cls.MODEL]

    @classmethod
    def schedule(cls) -> Union[str, keras.optimizers.schedules.LearningRateSchedule]:
        """A schedule name from `theseus.training.schedules.SCHEDULES`, or a schedule."""
        return "wsd"

    @classmethod
    def optimizer(cls) -> Union[str, keras.optimizers.Optimizer]:
        """An optimizer name from `theseus.training.optimizers.OPTIMIZERS`, or an optimizer."""
        return "adamw"

    def __init__(self, values: dict[str, Any], run_dir: Optional[Path] = None) -> None:
        self.values = dict(values)
        self.config = build(self.CONFIG, values)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        cfg = self.config
        self.tokens_per_step = cfg.batch_size * cfg.block_size
        self.total_steps = cfg.tokens // self.tokens_per_step
        if self.total_steps < 1:
            raise ConfigError(
                f"training/tokens={cfg.tokens} is less than one step of "
                f"batch_size * block_size = {self.tokens_per_step} tokens"
            )

    # ------------------------------------------------------------------ parts

    def build_model(self) -> M:
        model = as_causal_lm(build(self.MODEL, self.values))
        model.build((None, self.config.block_size))
        return model

    def tokenizer(self):
        try:
            return load_tokenizer(self.config.tokenizer)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"data/tokenizer: {error}") from None

    def token_stream(self) -> np.ndarray:
        """All training + validation tokens, documents separated by the tokenizer's EOS."""
        try:
            documents = read_text_source(self.config.source)
        except FileNotFoundError as error:
            raise ConfigError(f"data/source: {error}") from None
        return self.tokenizer().encode_documents(documents)

    def datasets(self, start_step: int) -> tuple[TokenWindows, ValidationWindows]:
        cfg = self.config
        train, val = split_tokens(self.token_stream(), cfg.validation_fraction, cfg.block_size)
        return (
            TokenWindows(train, cfg.block_size, cfg.batch_size, self.total_steps - start_step, cfg.seed, start_step),
            ValidationWindows(val, cfg.block_size, cfg.batch_size, cfg.validation_batches),
        )

    def build_schedule(self) -> keras.optimizers.schedules.LearningRateSchedule:
        cfg = self.config
        return build_schedule(
            self.schedule(),
            peak_lr=cfg.lr,
            total_steps=self.total_steps,
            warmup=cfg.warmup,
            decay=cfg.decay,
            decay_shape=cfg.decay_shape,
            final_fraction=cfg.final_lr_fraction,
        )

    def compile(self, model: M, schedule) -> None:
        cfg = self.config
        optimizer = build_optimizer(
            self.optimizer(),
            learning_rate=schedule,
            weight_decay=cfg.weight_decay,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            global_clipnorm=cfg.clip_norm or None,
        )
        model.compile(optimizer=optimizer, jit_compile=cfg.jit_compile)

    def callbacks(self, start_step: int, validation: ValidationWindows, schedule) -> list[keras.callbacks.Callback]:
        cfg = self.config
        common = dict(start_step=start_step, total_steps=self.total_steps)
        callbacks: list[keras.callbacks.Callback] = [Validation(validation, cfg.validation_interval, **common)]
        if self.run_dir is not None:
            callbacks.append(
                Checkpointer(
                    self.run_dir / "checkpoints",
                    cfg.checkpoint_interval,
                    self.tokens_per_step,
                    state={"seed": cfg.seed, "total_steps": self.total_steps},
                    keep=cfg.keep_checkpoints,
                    **common,
                )
            )
            callbacks.append(
                MetricsLogger(self.run_dir / "metrics.jsonl", cfg.log_interval, self.tokens_per_step, schedule=schedule, **common)
            )
        return callbacks

    # ------------------------------------------------------------------ the run

    def distribution(self) -> Optional[keras.distribution.Distribution]:
        """The Keras distribution (device mesh + layouts) to train under; None = one device."""
        return None

    def run(self) -> dict[str, Any]:
        """Train to `training/tokens`, resuming from the run folder's newest checkpoint."""
        distribution = self.distribution()
        with distribution.scope() if distribution is not None else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        keras.utils.set_random_seed(cfg.seed)
        model = self.build_model()
        schedule = self.build_schedule()
        self.compile(model, schedule)
        start_step = self.resume(model)
        train, validation = self.datasets(start_step)
        result: dict[str, Any] = {"total_steps": self.total_steps, "start_step": start_step}
        if start_step >= self.total_steps:
            print(f"run already complete at step {start_step}", flush=True)
            return result
        callbacks = self.callbacks(start_step, validation, schedule)
        if start_step == 0:
            initial = float(model.evaluate(validation, verbose=0, return_dict=True)["loss"])
            result["initial_val_loss"] = initial
            for callback in callbacks:
                if isinstance(callback, MetricsLogger):
                    callback.write({"step": 0, "tokens": 0, "val_loss": initial, "val_ppl": math.exp(initial)})
        print(
            f"training {model.count_params():,} parameters for {self.total_steps - start_step} steps "
            f"({self.tokens_per_step} tokens each)",
            flush=True,
        )
        model.fit(
            train,
            epochs=1,
            shuffle=False,  # the loader's order is already shuffled, by step
            callbacks=callbacks,
            verbose=1 if cfg.progress_bar else 0,
        )
        self.model = model
        final = next(c for c in callbacks if isinstance(c, Validation)).last
        result.update(final or {})
        return result

    def resume(self, model: M) -> int:
        """Restore the newest complete checkpoint into `model`; the step to continue from."""
        if self.run_dir is None:
            return 0
        checkpoint = ckpt.latest(self.run_dir / "checkpoints")
        if checkpoint is None:  # rows of an attempt that died before its first checkpoint
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return 0
        state = ckpt.restore(checkpoint, model)
        truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
        print(f"resuming from {checkpoint.path} (step {state['step']})", flush=True)
        return int(state["step"])
