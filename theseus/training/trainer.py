"""`BaseTrainer`: build the model and data from config, compile, `model.fit`, with callbacks.

A trainer is a job: its `components()` (its `CONFIG` dataclass and its `MODEL`) define
the YAML a user edits; `schedule()` and `optimizer()` are the two things a subclass
usually changes. A run is told in `train`, one small step after another, each returning
what the next needs. What differs between jobs is composed in, not inherited: the model
source (`theseus.training.sources`: a config, or a Hugging Face folder), the tuning part
(`theseus.training.tuning`: pretraining, or fine-tuning from trained weights) and the run
folder (`theseus.training.folder`: checkpoints, metrics, resume).
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import keras

from theseus.base import multihost
from theseus.base.backend import set_random_seed
from theseus.base.devices import rated_peak
from theseus.base.mesh import Topology, check_placement
from theseus.base.sharding import build_abstractly
from theseus.config import ConfigError, build
from theseus.evaluation.callback import EvaluationCallback
from theseus.evaluation.tasks import evaluations
from theseus.model.module import Module
from theseus.training.accumulation import accumulation, micro_batches, micro_steps
from theseus.training.callbacks import (
    Checkpointer,
    Interrupted,
    LearningRate,
    MetricsLogger,
    NonFiniteLoss,
    Signals,
    StopOnNonFinite,
    StopOnSignal,
    Throughput,
    Validation,
    flops_per_token,
    measure_peak_flops,
)
from theseus.training.config import PRECISIONS, BaseTrainerConfig
from theseus.training.data import Batches, check_vocabulary
from theseus.training.export import export_hf
from theseus.training.folder import CHECKPOINTS, CONFIG_FILE, METRICS_FILE, RunFolder
from theseus.training.norms import track_norms
from theseus.training.optimizers import build_optimizer
from theseus.training.schedules import build_schedule
from theseus.training.sources import ModelSource
from theseus.training.tuning import Pretraining

__all__ = ["CHECKPOINTS", "CONFIG_FILE", "METRICS_FILE", "BaseTrainer", "BaseTrainerConfig"]

M = TypeVar("M", bound=Module)


class BaseTrainer(Generic[M]):
    """Pretrain `MODEL` with `model.fit` (WSD schedule, AdamW) on the configured text.

    `train` tells a run; `model_source()` and `TUNING` are the parts a job composes in."""

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type] = BaseTrainerConfig
    TUNING: ClassVar[type] = Pretraining

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG, Topology, cls.MODEL, *cls.TUNING.CONFIGS]

    @classmethod
    def schedule(cls) -> str | keras.optimizers.schedules.LearningRateSchedule:
        """A schedule name from `theseus.training.schedules.SCHEDULES`, or a schedule; the
        config key `optimization/schedule`, when set, wins over it."""
        return "wsd"

    @classmethod
    def optimizer(cls) -> str | keras.optimizers.Optimizer:
        """An optimizer name from `theseus.training.optimizers.OPTIMIZERS`, or an optimizer."""
        return "adamw"

    def __init__(self, values: dict[str, Any], run_dir: Path | None = None) -> None:
        """Check everything a run needs from the config, before anything is written."""
        self.values, self.folder = dict(values), RunFolder(run_dir)
        cfg = self.config = build(self.CONFIG, values)
        self.total_steps, self.tokens_per_step = cfg.steps()
        self.micro_steps = micro_steps(cfg.batch_size, cfg.micro_batch_size)  # passes per optimizer step
        try:  # a known schedule whose phases fit the run
            self.build_schedule()
        except ValueError as error:
            raise ConfigError(f"optimization: {error}") from None
        cfg.check_installed()
        self.source = self.model_source()
        self.tuning = self.TUNING(self.values, cfg, self.source, type(self).__name__)  # what trains, on what
        self.topology = build(Topology, values)
        batch_key = "training/micro_batch_size" if self.micro_steps > 1 else "training/batch_size"
        per_pass = cfg.batch_size // self.micro_steps
        self.topology.validate(per_pass, batch_key, self.build_model)  # joins a multi-host job
        check_inputs(self)  # the model (built abstractly), the tokenizer and the data sources
        self.evaluations = evaluations(cfg.evaluations)  # a bad task file fails here too

    def model_source(self) -> ModelSource:
        """Where the model, its starting weights and its tokenizer come from."""
        return ModelSource(self.MODEL, self.values, self.config)

    def exports(self) -> bool:
        """Whether the trained model is written as a Hugging Face folder, `RUN/hf`."""
        return False

    def build_model(self) -> M:
        """The model, its layers computing in `training/precision` (weights stay float32), tuned."""
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(PRECISIONS[self.config.precision])  # read by each layer as it is created
        try:
            model = self.source.build()
        finally:
            keras.config.set_dtype_policy(previous)
        self.tuning.adapt(model)
        return model

    def tokenizer(self) -> Any:
        return self.source.tokenizer()

    def datasets(self, start_step: int) -> Batches:
        """Training batches from step `start_step` on, the fixed validation batches, and the
        data's fingerprint (resuming on other data than the checkpoint's is refused)."""
        vocab_size = self.values.get("architecture/vocab_size")
        batches = self.tuning.batches(self.config, self.tokenizer(), self.total_steps, start_step, vocab_size)
        self.folder.check_data(start_step, batches)
        return batches

    def build_schedule(self) -> keras.optimizers.schedules.LearningRateSchedule:
        arguments = self.config.schedule_arguments()
        return build_schedule(self.config.schedule or self.schedule(), total_steps=self.total_steps, **arguments)

    def compile(self, model: M, schedule) -> None:
        """Compile with the optimizer, accumulating gradients over `micro_steps` micro-batches."""
        optimizer = build_optimizer(
            self.optimizer(), **accumulation(schedule, self.micro_steps), **self.config.optimizer_arguments()
        )
        model.compile(optimizer=track_norms(optimizer), **self.config.compile_arguments())

    def extra_callbacks(self, start_step: int) -> list[keras.callbacks.Callback]:
        """A job's own callbacks, run after the checkpointer on every batch."""
        return []

    def distribution(self) -> keras.distribution.Distribution | None:
        """The Keras distribution (device mesh + layouts) to train under; None = one device."""
        return self.topology.distribution(self.build_model)

    def run(self) -> dict[str, Any]:
        """Train to `training/tokens`, resuming from the run folder's newest checkpoint; export."""
        distribution = self.distribution()
        with distribution.scope() if distribution is not None else contextlib.nullcontext():
            self.model, result = self.train()  # the trained model, for the caller to inspect
        if self.exports() and self.folder.path is not None:
            folder = export_hf(self.model, self.folder.path, self.source.export_tokenizer())
            result.update({"hf_folder": str(folder)} if folder else {})
        return result

    def train(self) -> tuple[M, dict[str, Any]]:
        """Build, compile, resume, read the data, fit the remaining steps: the model and the result."""
        set_random_seed(self.config.seed)
        model = self.build_model()
        check_placement(model)
        schedule = self.build_schedule()
        self.compile(model, schedule)
        resumed = self.folder.resume(model, self.tuning)  # {} for a new run
        start = int(resumed.get("step", 0))
        data = self.datasets(start)
        result: dict[str, Any] = {"total_steps": self.total_steps, "start_step": start}
        if start < self.total_steps:
            result.update(self.fit(model, data, schedule, resumed))
        else:
            print(f"run already complete at step {start}", flush=True)
        return model, {**result, **self.tuning.finish(model)}

    def fit(self, model: M, data: Batches, schedule, resumed: dict[str, Any]) -> dict[str, Any]:
        """`model.fit` from the resumed step to the end: the initial (new run) and last validation."""
        cfg, start = self.config, int(resumed.get("step", 0))
        train, validation = (
            micro_batches(multihost.local_batches(d, cfg.batch_size), self.micro_steps)
            for d in (data.train, data.validation)
        )
        steps = dict(start_step=start, total_steps=self.total_steps, micro_steps=self.micro_steps)
        state = {"seed": cfg.seed, "total_steps": self.total_steps, "data": data.fingerprint}
        state.update(self.tuning.checkpoint_state())
        logger, checkpointer = self.folder.recorders(
            cfg, self.tokens_per_step, resumed, state, self.tuning.checkpoint_weights(model)[0], **steps
        )
        validating = Validation(validation, cfg.validation_interval, **steps)
        result = {} if start else {"initial_val_loss": initial_validation(model, validation, logger)}
        announce(model, self.total_steps - start, self.tokens_per_step, self.topology.strategy)
        callbacks = [
            *monitors(cfg, schedule, flops_per_token(model, self.values, cfg.block_size), self.tokens_per_step, steps),
            validating,
            *evaluation(self.evaluations, self.tokenizer, validation, self.folder, cfg, self.tokens_per_step, steps),
            *filter(None, [logger, checkpointer]),
            *self.extra_callbacks(start),
        ]
        fit_until_stopped(model, train, callbacks, steps, checkpointer, self.folder, cfg)
        return {**result, **(validating.last or {})}


def check_inputs(trainer: BaseTrainer) -> None:
    """What a run reads, checked before its folder is touched: the model, built abstractly (no
    memory), whose constructor's refusal is one ConfigError naming `architecture`; the
    tokenizer against the model's vocabulary; every text source of `data/...`."""
    build_abstractly(trainer.build_model)
    check_vocabulary(trainer.tokenizer(), trainer.values.get("architecture/vocab_size"))
    trainer.config.check_sources()


def announce(model: keras.Model, steps: int, tokens_per_step: int, strategy: str) -> None:
    """The line that starts training: the model's size, the steps, and where they run, e.g.
    `on jax, 8 devices: batch 2 × shard 4, tp` (the mesh of the run's distribution), or `on torch, 1 device`."""
    distribution = keras.distribution.distribution()  # the one the run entered, if any
    mesh = distribution.device_mesh if distribution is not None else None
    where = "1 device"
    if mesh is not None and mesh.devices.size > 1:
        axes = " × ".join(f"{axis} {size}" for axis, size in zip(mesh.axis_names, mesh.shape))
        where = f"{mesh.devices.size} devices: {axes}, {strategy}"
    print(
        f"training {model.count_params():,} parameters for {steps} steps "
        f"({tokens_per_step} tokens each) on {keras.backend.backend()}, {where}",
        flush=True,
    )


def monitors(
    config: BaseTrainerConfig, schedule, flops_per_token: float, tokens_per_step: int, steps: dict[str, int]
) -> list[keras.callbacks.Callback]:
    """The callbacks before validation: a non-finite loss stops, throughput (and MFU), learning rate.

    `mfu` is against `logging/peak_flops` when set, else the device's rated peak
    (`theseus.base.devices`), else the timed matmul that `mfu_measured` is against (none is
    timed when `logging/peak_flops` is set: `mfu_measured` is then left out).
    """
    distribution = keras.distribution.distribution()  # the one the run entered, if any
    devices = distribution.device_mesh.devices.size if distribution is not None else 1
    dtype = "bfloat16" if config.precision == "bfloat16" else "float32"
    rated, what = (config.peak_flops, "logging/peak_flops") if config.peak_flops else rated_peak(dtype)
    measured = 0.0 if config.peak_flops else measure_peak_flops(dtype)
    print(
        f"mfu against {devices} x {(rated or measured) / 1e12:.3g} TFLOP/s ({what or 'measured'})"
        + (f", mfu_measured against a timed {dtype} matmul: {measured / 1e12:.3g} TFLOP/s" if measured else ""),
        flush=True,
    )
    start, total, micro = steps["start_step"], steps["total_steps"], steps["micro_steps"]
    return [
        StopOnNonFinite(start, micro),
        Throughput(
            tokens_per_step // micro,
            config.log_interval * micro,
            flops_per_token,
            devices * (rated or measured),
            devices * measured,
        ),
        LearningRate(schedule, start, total, micro),
    ]


def evaluation(
    tasks: list,
    tokenizer: Callable[[], Any],
    validation,
    folder: RunFolder,
    config: BaseTrainerConfig,
    tokens_per_step: int,
    steps: dict[str, int],
) -> list[keras.callbacks.Callback]:
    """The `logging/evaluations` tasks, every validation interval ([] when there are none)."""
    if not tasks:
        return []
    return [
        EvaluationCallback(
            tasks,
            tokenizer(),
            config.validation_interval,
            path=folder.evaluations_file(),
            tokens_per_step=tokens_per_step,
            heldout=lambda: (validation[i] for i in range(len(validation))),
            **steps,
        )
    ]


def initial_validation(model: keras.Model, validation, logger: MetricsLogger | None) -> float:
    """The validation loss before training, logged as the metrics' row of step 0."""
    loss = float(model.evaluate(validation, verbose=0, return_dict=True)["loss"])
    if logger is not None:
        logger.write({"step": 0, "tokens": 0, "val_loss": loss, "val_ppl": math.exp(loss)})
    return loss


def fit_until_stopped(
    model: keras.Model,
    train,
    callbacks: list,
    steps: dict[str, int],
    checkpointer: Checkpointer | None,
    folder: RunFolder,
    config: BaseTrainerConfig,
) -> None:
    """One epoch of `model.fit` over `train`. SIGTERM or SIGINT ends it after the current step,
    with a checkpoint (`Interrupted`); a non-finite loss ends it at once (`NonFiniteLoss`)."""
    stop = StopOnSignal(signals := Signals(), steps["start_step"], steps["micro_steps"])
    with signals:
        try:
            model.fit(
                train,
                epochs=1,
                shuffle=False,  # the loader's order is already shuffled, by step
                callbacks=[*callbacks, stop],
                verbose=1 if config.progress_bar else 0,
            )
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"{error}; {folder.last_good()} (nothing after it was written)") from None
        finally:
            folder.close()  # a W&B run is finished
            if config.plot:
                folder.plot()
    if signals.received is not None:
        where = (
            f"saved a checkpoint at step {checkpointer.saved_step}" if checkpointer else "no run folder: nothing saved"
        )
        name = signal.Signals(signals.received).name
        raise Interrupted(f"training stopped by {name}; {where}: run the same command to resume", signals.received)
