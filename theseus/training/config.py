"""What every training job reads, as sections: `training/`, `optimization/`, `logging/`.

`BaseTrainerConfig` composes them with the data keys (`DataConfig`); a job's `CONFIG`
extends it. Each section also says what its keys mean for a run: its length in steps,
the schedule's and optimizer's arguments, and what it needs installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Literal

from theseus.config import ConfigError, field
from theseus.data.config import DataConfig
from theseus.training.optimizers import NO_DECAY

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
"""`training/precision` -> Keras dtype policy ("mixed_bfloat16": bfloat16 compute, float32 variables)."""


@dataclasses.dataclass
class TrainingSection:
    """How long a run is, in what batches and at what precision."""

    # one line a key, alike in every section: each key is declared once, where it belongs
    tokens: int = field(
        "training/tokens",
        default=1_000_000,
        bounds=">= 1",
        help="training tokens; steps = tokens // (batch_size * block_size)",
    )
    batch_size: int = field(
        "training/batch_size", default=16, bounds=">= 1", help="sequences per optimizer step (global batch)"
    )
    block_size: int = field("architecture/block_size", default=256, bounds=">= 1", help="context length in tokens")
    seed: int = field("training/seed", default=0, bounds=">= 0", help="seed of initialisation, dropout and data order")
    jit_compile: bool | str = field(
        "training/jit_compile", default="auto", help="Keras jit_compile: auto, true or false"
    )
    micro_batch_size: int | None = field(
        "training/micro_batch_size",
        default=None,
        bounds=">= 1",
        help="sequences per forward/backward pass (gradient accumulation); must divide batch_size; null = batch_size",
    )
    precision: Literal["float32", "bfloat16"] = field(
        "training/precision",
        default="float32",
        help="compute dtype; bfloat16 keeps float32 master weights and a float32 loss",
    )
    loss_chunk: int | bool | Literal["auto"] = field(
        "training/loss_chunk",
        default="auto",
        bounds=">= 0",
        help="tokens per chunk of the LM head + loss, so the full logits never exist (JAX); "
        "auto = chunked above vocabulary 32768, true = chunked, 0 or false = full logits",
    )

    def steps(self) -> tuple[int, int]:
        """(optimizer steps of the run, tokens per step); a ConfigError below one step."""
        tokens_per_step = self.batch_size * self.block_size
        if self.tokens < tokens_per_step:
            raise ConfigError(
                f"training/tokens={self.tokens} is less than one step of "
                f"batch_size * block_size = {tokens_per_step} tokens"
            )
        return self.tokens // tokens_per_step, tokens_per_step

    def compile_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `CausalLM.compile` these keys set (besides the optimizer)."""
        return dict(jit_compile=self.jit_compile, loss_chunk=self.loss_chunk)


@dataclasses.dataclass
class OptimizationSection:
    """The learning-rate schedule and the optimizer's settings."""

    # one line a key, alike in every section: each key is declared once, where it belongs
    schedule: str | None = field(
        "optimization/schedule",
        default=None,
        help="wsd, wsd-s, cosine or constant (theseus.training.schedules.SCHEDULES); null = the trainer's schedule() (wsd)",
    )
    cycles: list[int | float] = field(
        "optimization/cycles",
        default_factory=lambda: [0.5],
        bounds="> 0",
        help="wsd-s: where each cycle but the last ends, fractions of the run (< 1.0) or steps; each cycle decays over `decay` of its own length",
    )
    lr: float = field("optimization/lr", default=2e-3, bounds="> 0", help="peak learning rate")
    warmup: int | float = field(
        "optimization/warmup", default=0.05, bounds=">= 0", help="warmup: fraction of steps (<= 1.0) or steps"
    )
    decay: int | float = field(
        "optimization/decay", default=0.2, bounds=">= 0", help="WSD decay: fraction of steps (<= 1.0) or steps"
    )
    decay_shape: str = field(
        "optimization/decay_shape", default="1-sqrt", help="WSD decay shape: linear, cosine or 1-sqrt"
    )
    final_lr_fraction: float = field(
        "optimization/final_lr_fraction", default=0.0, bounds="[0, 1]", help="final lr / peak lr"
    )
    weight_decay: float = field(
        "optimization/weight_decay", default=0.1, bounds=">= 0", help="AdamW decoupled weight decay"
    )
    beta_1: float = field("optimization/beta_1", default=0.9, bounds="[0, 1)", help="Adam beta 1")
    beta_2: float = field("optimization/beta_2", default=0.95, bounds="[0, 1)", help="Adam beta 2")
    clip_norm: float = field(
        "optimization/clip_norm", default=1.0, bounds=">= 0", help="global gradient-norm clip; 0 = off"
    )
    decay_embeddings: bool = field(
        "optimization/decay_embeddings",
        default=False,
        help="apply weight decay to embedding tables too (never to norms and biases)",
    )

    def schedule_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `build_schedule` these keys set (each schedule takes those it knows)."""
        return dict(
            peak_lr=self.lr,
            warmup=self.warmup,
            decay=self.decay,
            decay_shape=self.decay_shape,
            final_fraction=self.final_lr_fraction,
            cycles=self.cycles,
        )

    def optimizer_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `build_optimizer` these keys set."""
        return dict(
            weight_decay=self.weight_decay,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            global_clipnorm=self.clip_norm or None,
            no_decay=[name for name in NO_DECAY if not (self.decay_embeddings and "embedding" in name)],
        )


@dataclasses.dataclass
class LoggingSection:
    """What a run reports and keeps: metrics, validations, checkpoints, evaluations."""

    # one line a key, alike in every section: each key is declared once, where it belongs
    log_interval: int = field("logging/log_interval", default=10, bounds=">= 1", help="steps between metrics rows")
    validation_interval: int = field(
        "logging/validation_interval", default=100, bounds=">= 1", help="steps between validations"
    )
    validation_batches: int = field(
        "logging/validation_batches", default=20, bounds=">= 1", help="batches per validation (fixed set)"
    )
    checkpoint_interval: int = field(
        "logging/checkpoint_interval", default=200, bounds=">= 1", help="steps between checkpoints"
    )
    keep_checkpoints: int = field(
        "logging/keep_checkpoints", default=3, bounds=">= 0", help="recent checkpoints kept; 0 = all"
    )
    keep_every: int | None = field(
        "logging/keep_every",
        default=None,
        bounds=">= 0",
        help="steps: checkpoints at its multiples are kept besides the recent ones; null = about 10 through a WSD run's stable phase (none for other schedules); 0 = none",
    )
    progress_bar: bool = field("logging/progress_bar", default=True, help="show Keras's progress bar")
    peak_flops: float = field(
        "logging/peak_flops",
        default=0.0,
        bounds=">= 0",
        help="peak FLOP/s of one device for `mfu` (times the devices in the mesh); 0 = the device's rated peak, else a timed matmul",
    )
    plot: bool = field(
        "logging/plot", default=True, help="draw metrics.png (loss, val loss and lr against tokens) at the end"
    )
    tensorboard: bool = field(
        "logging/tensorboard",
        default=False,
        help="also write the metrics rows as TensorBoard scalars (run_dir/tensorboard; needs the tensorboard package)",
    )
    wandb: bool = field(
        "logging/wandb",
        default=False,
        help="also log the metrics rows and the config to Weights & Biases (run_dir/wandb; needs the wandb package; WANDB_MODE=offline without network)",
    )
    wandb_project: str = field("logging/wandb_project", default="theseus", help="the W&B project of logging/wandb")
    wandb_run: str = field("logging/wandb_run", default="", help="the W&B run's name; empty = the run folder's name")
    evaluations: list[str] = field(
        "logging/evaluations",
        default_factory=list,
        help="run every validation_interval steps into evaluations.jsonl, e.g. [perplexity, 'multiple_choice:FILE.jsonl'] (theseus.evaluation.tasks)",
    )

    def check_installed(self) -> None:
        """A ConfigError when a key asks for a package that is not installed."""
        for key in ("tensorboard", "wandb"):  # each key is named after the package it needs
            if getattr(self, key) and importlib.util.find_spec(key) is None:
                raise ConfigError(f"logging/{key}: true needs the {key} package (pip install {key})")


@dataclasses.dataclass
class BaseTrainerConfig(LoggingSection, OptimizationSection, TrainingSection, DataConfig):
    """What every pretraining job reads besides its model's architecture: the `data/...`
    keys (`DataConfig`), then the `training/`, `optimization/` and `logging/` sections."""
