"""A training run's folder: what a run writes there and reads back when it resumes.

`RUN/config.yaml` (written by the job launcher), `RUN/checkpoints/`, `RUN/metrics.jsonl`
(and .csv, .png), `RUN/evaluations.jsonl`, `RUN/tensorboard/`, `RUN/wandb/`. A trainer without a folder
(`path` None, as in tests and benchmarks) writes nothing and starts afresh.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from theseus.base import multihost
from theseus.config import ConfigError, load_yaml, nest
from theseus.evaluation.callback import EVALUATIONS_FILE
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import (
    Checkpointer,
    MetricsLogger,
    TensorBoardWriter,
    out_of_space,
    truncate_metrics,
)
from theseus.training.data import Batches
from theseus.training.plot import plot_run
from theseus.training.wandb_sink import WandbWriter

if TYPE_CHECKING:
    from theseus.training.tuning import Pretraining

Sink = TensorBoardWriter | WandbWriter  # takes each metrics row; closed when training stops

log = logging.getLogger("theseus")

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


class RunFolder:
    """The files of the run in `path` (None: a run that keeps nothing)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.sinks: list[Sink] = []  # where the metrics rows go besides metrics.jsonl

    def resume(self, model: keras.Model, tuning: Pretraining) -> dict[str, Any]:
        """Restore the newest complete checkpoint into `model` (the part of it `tuning`
        checkpoints); its state ({} for a new run), which `tuning` checks.

        Broken checkpoints newer than it are skipped with a warning and set aside, and
        metrics rows written after it (by an attempt that died later) are dropped.
        """
        if self.path is None:
            return {}
        checkpoint = ckpt.latest(self.path / CHECKPOINTS)
        ckpt.set_aside_after(self.path / CHECKPOINTS, checkpoint.step if checkpoint else 0)
        if checkpoint is None:  # rows of an attempt that died before its first checkpoint
            truncate_metrics(self.path / METRICS_FILE, -1)
            return {}
        state = ckpt.restore(checkpoint, model, tuning.checkpoint_weights(model)[1])
        tuning.check_resumed(state)
        truncate_metrics(self.path / METRICS_FILE, state["step"])
        print(f"resuming from {checkpoint.path} (step {state['step']})", flush=True)
        return state

    def check_data(self, step: int, batches: Batches) -> None:
        """A ConfigError when the checkpoint of `step` was trained on other data than `batches`."""
        state = ckpt.step_dir(self.path / CHECKPOINTS, step) / ckpt.STATE_FILE if self.path and step else None
        saved = json.loads(state.read_text()).get("data") if state is not None and state.is_file() else None
        if saved not in (None, batches.fingerprint):
            raise ConfigError(
                f"data: the {batches.kind} differ from those of the checkpoint at step {step} "
                f"(fingerprint {batches.fingerprint}, not {saved}): resuming would not continue its batches"
            )

    def recorders(
        self,
        config: Any,
        tokens_per_step: int,
        resumed: dict[str, Any],
        state: dict[str, Any],
        save_weights: Callable[[Path], None] | None,
        **steps: int,
    ) -> tuple[MetricsLogger | None, Checkpointer | None]:
        """The metrics logger and the checkpointer (to run in that order); None, None without a folder."""
        if self.path is None:
            return None, None
        self.sinks = self.open_sinks(config) if multihost.is_primary() else []
        logger = MetricsLogger(
            self.path / METRICS_FILE,
            config.log_interval,
            tokens_per_step,
            loss_state=resumed.get("loss_state"),
            sinks=self.sinks,
            **steps,
        )
        run_config = self.path / CONFIG_FILE
        checkpointer = Checkpointer(
            self.path / CHECKPOINTS,
            config.checkpoint_interval,
            tokens_per_step,
            state=state,
            keep=config.keep_checkpoints,
            keep_every=config.keep_every,
            files={CONFIG_FILE: run_config.read_text()} if run_config.is_file() else None,
            best_val_loss=ckpt.best_val_loss(self.path / CHECKPOINTS),
            save_weights=save_weights,
            **steps,
        )
        return logger, checkpointer

    def open_sinks(self, config: Any) -> list[Sink]:
        """The sinks that `logging/tensorboard` and `logging/wandb` ask for."""
        sinks: list[Sink] = []
        if config.tensorboard:
            sinks.append(TensorBoardWriter(self.path / "tensorboard"))
        if config.wandb:
            run_config = self.path / CONFIG_FILE
            tree = nest(load_yaml(run_config)) if run_config.is_file() else {}
            sinks.append(WandbWriter(self.path, config.wandb_project, config.wandb_run or self.path.name, tree))
        return sinks

    def close(self) -> None:
        """Close the sinks that need it (a W&B run is finished), once training has stopped."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def evaluations_file(self) -> Path | None:
        """Where the periodic evaluations go (None: nowhere, or not this process's to write)."""
        return self.path / EVALUATIONS_FILE if self.path is not None and multihost.is_primary() else None

    def last_good(self) -> str:
        """Where training can go on from after a failure, in words."""
        good = ckpt.latest(self.path / CHECKPOINTS) if self.path is not None else None
        return f"the last good checkpoint is {good.path}" if good else "no checkpoint was saved"

    def plot(self) -> None:
        """Draw `metrics.png` (when there are rows); on a full disk, only a warning (the run has
        stopped for that already, or will at its next checkpoint)."""
        if self.path is not None and (self.path / METRICS_FILE).is_file() and multihost.is_primary():
            try:
                plot_run(self.path)
            except OSError as error:
                if out_of_space(error) is None:
                    raise
                log.warning("no room to draw %s: %s", self.path / "metrics.png", error)
