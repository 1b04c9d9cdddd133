"""`BaseTrainer`: build the model and data from config, compile, `model.fit`, with callbacks.

A trainer is a job: its `components()` (its `CONFIG` dataclass and its `MODEL`) define
the YAML a user edits; `schedule()` and `optimizer()` are the two things a subclass
usually changes. Everything else (validation, metrics, checkpoints, resume) is a Keras
callback or a plain step here, the same for every model family.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import signal
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Optional, TypeVar, Union

import keras
import numpy as np

from theseus.base import multihost
from theseus.base.mesh import Topology, check_placement
from theseus.config import ConfigError, build, field
from theseus.data import TokenWindows, ValidationWindows, load_tokenizer
from theseus.data.config import DataConfig, training_data
from theseus.evaluation.callback import EVALUATIONS_FILE, EvaluationCallback
from theseus.evaluation.tasks import evaluations
from theseus.model.models.causal_lm import as_causal_lm
from theseus.model.module import Module
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import (
    Checkpointer,
    Interrupted,
    LearningRate,
    MetricsLogger,
    NonFiniteLoss,
    Signals,
    StopOnNonFinite,
    StopOnSignal,
    TensorBoardWriter,
    Throughput,
    Validation,
    measure_peak_flops,
    truncate_metrics,
)
from theseus.training.norms import track_norms
from theseus.training.plot import plot_run
from theseus.training.optimizers import NO_DECAY, build_optimizer
from theseus.training.schedules import build_schedule

M = TypeVar("M", bound=Module)

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
"""`training/precision` -> Keras dtype policy ("mixed_bfloat16": bfloat16 compute, float32 variables)."""


@keras.saving.register_keras_serializable(package="theseus")
class PerOptimizerStep(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` seen in optimizer steps under gradient accumulation.

    A Keras optimizer with `gradient_accumulation_steps=k` calls its schedule with the
    micro-batch counter; this divides it by k, so a schedule written in optimizer steps
    (as theseus's are) keeps its meaning, as with optax's `MultiSteps`.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, micro_steps: int) -> None:
        self.schedule, self.micro_steps = schedule, micro_steps

    def __call__(self, step: Any) -> Any:
        return self.schedule(keras.ops.floor_divide(step, self.micro_steps))

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "micro_steps": self.micro_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PerOptimizerStep":
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["micro_steps"])


class MicroBatches(keras.utils.PyDataset):
    """Each batch of `dataset` as `micro_steps` consecutive micro-batches of its rows.

    With the optimizer accumulating over `micro_steps` batches, one optimizer step still
    sees exactly the global batch, whatever fits in memory at once.
    """

    def __init__(self, dataset: keras.utils.PyDataset, micro_steps: int) -> None:
        super().__init__()
        self.dataset, self.micro_steps = dataset, micro_steps
        self._batch: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.dataset) * self.micro_steps

    def __getitem__(self, index: int):
        number, part = divmod(index, self.micro_steps)
        if self._batch[0] != number:  # each global batch is built once, not once per micro-batch
            self._batch = (number, self.dataset[number])

        def rows(array):
            size = len(array) // self.micro_steps
            return array[part * size : (part + 1) * size]

        return keras.tree.map_structure(rows, self._batch[1])


@dataclasses.dataclass
class BaseTrainerConfig(DataConfig):
    """What every pretraining job reads besides its model's architecture (its `data/...`
    keys come from `DataConfig`)."""

    tokens: int = field("training/tokens", default=1_000_000, help="training tokens; steps = tokens // (batch_size * block_size)")
    batch_size: int = field("training/batch_size", default=16, help="sequences per optimizer step (global batch)")
    block_size: int = field("architecture/block_size", default=256, help="context length in tokens")
    seed: int = field("training/seed", default=0, help="seed of initialisation, dropout and data order")
    jit_compile: Union[bool, str] = field("training/jit_compile", default="auto", help="Keras jit_compile: auto, true or false")
    micro_batch_size: Optional[int] = field("training/micro_batch_size", default=None, help="sequences per forward/backward pass (gradient accumulation); must divide batch_size; null = batch_size")
    precision: Literal["float32", "bfloat16"] = field("training/precision", default="float32", help="compute dtype; bfloat16 keeps float32 master weights and a float32 loss")

    schedule: Optional[str] = field("optimization/schedule", default=None, help="wsd, wsd-s, cosine or constant (theseus.training.schedules.SCHEDULES); null = the trainer's schedule() (wsd)")
    cycles: list[Union[int, float]] = field("optimization/cycles", default_factory=lambda: [0.5], help="wsd-s: where each cycle but the last ends, fractions of the run (< 1.0) or steps; each cycle decays over `decay` of its own length")
    lr: float = field("optimization/lr", default=2e-3, help="peak learning rate")
    warmup: Union[int, float] = field("optimization/warmup", default=0.05, help="warmup: fraction of steps (<= 1.0) or steps")
    decay: Union[int, float] = field("optimization/decay", default=0.2, help="WSD decay: fraction of steps (<= 1.0) or steps")
    decay_shape: str = field("optimization/decay_shape", default="1-sqrt", help="WSD decay shape: linear, cosine or 1-sqrt")
    final_lr_fraction: float = field("optimization/final_lr_fraction", default=0.0, help="final lr / peak lr")
    weight_decay: float = field("optimization/weight_decay", default=0.1, help="AdamW decoupled weight decay")
    beta_1: float = field("optimization/beta_1", default=0.9, help="Adam beta 1")
    beta_2: float = field("optimization/beta_2", default=0.95, help="Adam beta 2")
    clip_norm: float = field("optimization/clip_norm", default=1.0, help="global gradient-norm clip; 0 = off")
    decay_embeddings: bool = field("optimization/decay_embeddings", default=False, help="apply weight decay to embedding tables too (never to norms and biases)")

    log_interval: int = field("logging/log_interval", default=10, help="steps between metrics rows")
    validation_interval: int = field("logging/validation_interval", default=100, help="steps between validations")
    validation_batches: int = field("logging/validation_batches", default=20, help="batches per validation (fixed set)")
    checkpoint_interval: int = field("logging/checkpoint_interval", default=200, help="steps between checkpoints")
    keep_checkpoints: int = field("logging/keep_checkpoints", default=3, help="recent checkpoints kept; 0 = all")
    progress_bar: bool = field("logging/progress_bar", default=True, help="show Keras's progress bar")
    peak_flops: float = field("logging/peak_flops", default=0.0, help="peak FLOP/s of one device, for MFU (times the devices in the mesh); 0 = measure a matmul at start")
    plot: bool = field("logging/plot", default=True, help="draw metrics.png (loss, val loss and lr against tokens) at the end")
    tensorboard: bool = field("logging/tensorboard", default=False, help="also write the metrics rows as TensorBoard scalars (run_dir/tensorboard; needs the tensorboard package)")
    evaluations: list[str] = field("logging/evaluations", default_factory=list, help="run every validation_interval steps into evaluations.jsonl, e.g. [perplexity, 'multiple_choice:FILE.jsonl'] (theseus.evaluation.tasks)")


class BaseTrainer(Generic[M]):
    """Pretrain `MODEL` with `model.fit` (WSD schedule, AdamW) on the configured text."""

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type] = BaseTrainerConfig

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG, Topology, cls.MODEL]

    @classmethod
    def schedule(cls) -> Union[str, keras.optimizers.schedules.LearningRateSchedule]:
        """A schedule name from `theseus.training.schedules.SCHEDULES`, or a schedule; the
        config key `optimization/schedule`, when set, wins over it."""
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
        micro_batch_size = cfg.micro_batch_size or cfg.batch_size
        if micro_batch_size < 1 or cfg.batch_size % micro_batch_size:
            raise ConfigError(
                f"training/micro_batch_size={cfg.micro_batch_size} must divide training/batch_size={cfg.batch_size}"
            )
        self.micro_steps = cfg.batch_size // micro_batch_size  # forward/backward passes per optimizer step
        try:  # a known schedule whose phases fit the run: a config error, found before anything is written
            self.build_schedule()
        except ValueError as error:
            raise ConfigError(f"optimization: {error}") from None
        if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logging/tensorboard: true needs the tensorboard package (pip install tensorboard)")
        self.topology = build(Topology, values)
        batch_key = "training/micro_batch_size" if self.micro_steps > 1 else "training/batch_size"
        # joins a multi-host job, checks devices, batch and layout: before anything is written
        self.topology.validate(micro_batch_size, batch_key, self.build_model)
        self.evaluations = evaluations(cfg.evaluations)  # a bad task file fails here too

    # ------------------------------------------------------------------ parts

    def build_model(self) -> M:
        """The model, built, its layers computing in `training/precision` (weights stay float32)."""
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(PRECISIONS[self.config.precision])  # read by each layer as it is created
        try:
            model = as_causal_lm(build(self.MODEL, self.values))
            model.build((None, self.config.block_size))
        finally:
            keras.config.set_dtype_policy(previous)
        return model

    def tokenizer(self):
        """The tokenizer `data/tokenizer` names (a ConfigError if there is none)."""
        return load_tokenizer(self.config.tokenizer)

    def token_stream(self) -> np.ndarray:
        """All tokens of the text source `data/source`, documents separated by the tokenizer's EOS."""
        return self.tokenizer().encode_documents(self.config.reader().documents())

    def datasets(self, start_step: int) -> tuple[TokenWindows, ValidationWindows]:
        """Training batches from global step `start_step` on, and the fixed validation batches.

        A batch is a pure function of (seed, step), so the step is the whole data position;
        `data_fingerprint` (saved in checkpoints) identifies the tokens, and resuming on
        different tokens is refused.
        """
        cfg = self.config
        tokenizer = self.tokenizer()
        vocab_size = self.values.get("architecture/vocab_size")
        if isinstance(vocab_size, int) and tokenizer.vocab_size > vocab_size:
            raise ConfigError(
                f"architecture/vocab_size={vocab_size} is smaller than the {tokenizer.vocab_size} "
                f"tokens of data/tokenizer {tokenizer.name}"
            )
        data = training_data(cfg, tokenizer, cfg.block_size)
        self.data_fingerprint = data.fingerprint
        if start_step and self.run_dir is not None:
            state = ckpt.step_dir(self.run_dir / CHECKPOINTS, start_step) / ckpt.STATE_FILE
            saved = json.loads(state.read_text()).get("data") if state.is_file() else None
            if saved not in (None, data.fingerprint):
                raise ConfigError(
                    f"data: the tokens differ from those of the checkpoint at step {start_step} "
                    f"(fingerprint {data.fingerprint}, not {saved}): resuming would not continue its batches"
                )
        try:
            return (
                TokenWindows(data.train, cfg.block_size, cfg.batch_size, self.total_steps - start_step,
                             cfg.seed, start_step, weights=data.weights),
                ValidationWindows(data.validation, cfg.block_size, cfg.batch_size, cfg.validation_batches,
                                  weights=data.weights),
            )
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None

    def build_schedule(self) -> keras.optimizers.schedules.LearningRateSchedule:
        cfg = self.config
        return build_schedule(
            cfg.schedule or self.schedule(),
            peak_lr=cfg.lr,
            total_steps=self.total_steps,
            warmup=cfg.warmup,
            decay=cfg.decay,
            decay_shape=cfg.decay_shape,
            final_fraction=cfg.final_lr_fraction,
            cycles=cfg.cycles,
        )

    def compile(self, model: M, schedule) -> None:
        """Compile with the optimizer, accumulating gradients over `micro_steps` micro-batches."""
        cfg = self.config
        accumulate = self.micro_steps > 1
        optimizer = build_optimizer(
            self.optimizer(),
            learning_rate=PerOptimizerStep(schedule, self.micro_steps) if accumulate else schedule,
            weight_decay=cfg.weight_decay,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            global_clipnorm=cfg.clip_norm or None,
            no_decay=[name for name in NO_DECAY if not (cfg.decay_embeddings and "embedding" in name)],
            gradient_accumulation_steps=self.micro_steps if accumulate else None,
        )
        model.compile(optimizer=track_norms(optimizer), jit_compile=cfg.jit_compile)

    def flops_per_token(self, model: M) -> float:
        """Training FLOPs per token, for MFU: 6 per parameter (forward and backward) plus
        attention's 12 * n_layer * n_embd * block_size (PaLM, appendix B). A family whose
        config has no `architecture/n_layer` and `n_embd` gets the parameter term only."""
        layers, width = self.values.get("architecture/n_layer"), self.values.get("architecture/n_embd")
        attention = 12 * layers * width * self.config.block_size if layers and width else 0
        return 6 * model.count_params() + attention

    def callbacks(self, start_step: int, validation, schedule, resumed: dict[str, Any]) -> list[keras.callbacks.Callback]:
        """The training callbacks, in the order they must run (see `theseus.training.callbacks`).

        `resumed` is the state of the checkpoint the run continues from ({} for a new run).
        """
        cfg = self.config
        steps = dict(start_step=start_step, total_steps=self.total_steps, micro_steps=self.micro_steps)
        distribution = keras.distribution.distribution()  # the one `run` entered, if any
        devices = distribution.device_mesh.devices.size if distribution is not None else 1
        peak = devices * (cfg.peak_flops or measure_peak_flops("bfloat16" if cfg.precision == "bfloat16" else "float32"))
        callbacks: list[keras.callbacks.Callback] = [
            StopOnNonFinite(start_step, self.micro_steps),
            Throughput(self.tokens_per_step // self.micro_steps, cfg.log_interval * self.micro_steps,
                       self.flops_per_token(self.model), peak),
            LearningRate(schedule, start_step, self.total_steps, self.micro_steps),
            Validation(validation, cfg.validation_interval, **steps),
        ]
        if self.evaluations:
            callbacks.append(
                EvaluationCallback(
                    self.evaluations, self.tokenizer(), cfg.validation_interval,
                    path=self.run_dir / EVALUATIONS_FILE if self.run_dir is not None and multihost.is_primary() else None,
                    tokens_per_step=self.tokens_per_step,
                    heldout=lambda: (validation[i] for i in range(len(validation))),
                    **steps,
                )
            )
        if self.run_dir is not None:
            callbacks.append(
                MetricsLogger(self.run_dir / METRICS_FILE, cfg.log_interval, self.tokens_per_step,
                              loss_state=resumed.get("loss_state"),
                              sinks=[TensorBoardWriter(self.run_dir / "tensorboard")] if cfg.tensorboard else [], **steps)
            )
            config = self.run_dir / CONFIG_FILE
            callbacks.append(
                Checkpointer(
                    self.run_dir / CHECKPOINTS,
                    cfg.checkpoint_interval,
                    self.tokens_per_step,
                    state={"seed": cfg.seed, "total_steps": self.total_steps, "data": getattr(self, "data_fingerprint", None)},
                    keep=cfg.keep_checkpoints,
                    files={CONFIG_FILE: config.read_text()} if config.is_file() else None,
                    best_val_loss=ckpt.best_val_loss(self.run_dir / CHECKPOINTS),
                    save_weights=self.checkpoint_weights(self.model)[0],
                    **steps,
                )
            )
        return callbacks

    # ------------------------------------------------------------------ the run

    def distribution(self) -> Optional[keras.distribution.Distribution]:
        """The Keras distribution (device mesh + layouts) to train under; None = one device."""
        return self.topology.distribution(self.build_model)

    def run(self) -> dict[str, Any]:
        """Train to `training/tokens`, resuming from the run folder's newest checkpoint."""
        distribution = self.distribution()
        with distribution.scope() if distribution is not None else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        keras.utils.set_random_seed(cfg.seed)
        model = self.build_model()
        check_placement(model)
        schedule = self.build_schedule()
        self.compile(model, schedule)
        self.model = model
        resumed = self.resume(model)
        start_step = int(resumed.get("step", 0))
        train, validation = (multihost.local_batches(d, cfg.batch_size) for d in self.datasets(start_step))
        if self.micro_steps > 1:
            train, validation = MicroBatches(train, self.micro_steps), MicroBatches(validation, self.micro_steps)
        result: dict[str, Any] = {"total_steps": self.total_steps, "start_step": start_step}
        if start_step >= self.total_steps:
            print(f"run already complete at step {start_step}", flush=True)
            return result
        callbacks = self.callbacks(start_step, validation, schedule, resumed)
        if start_step == 0:
            initial = float(model.evaluate(validation, verbose=0, return_dict=True)["loss"])
            result["initial_val_loss"] = initial
            for callback in callbacks:
                if isinstance(callback, MetricsLogger):
                    callback.write({"step": 0, "tokens": 0, "val_loss": initial, "val_ppl": math.exp(initial)})
        print(
            f"training {model.count_params():,} parameters for {self.total_steps - start_step} steps "
            f"({self.tokens_per_step} tokens each) on {keras.backend.backend()}",
            flush=True,
        )
        with Signals() as signals:
            try:
                model.fit(
                    train,
                    epochs=1,
                    shuffle=False,  # the loader's order is already shuffled, by step
                    callbacks=[*callbacks, StopOnSignal(signals, start_step, self.micro_steps)],
                    verbose=1 if cfg.progress_bar else 0,
                )
            except NonFiniteLoss as error:
                good = ckpt.latest(self.run_dir / CHECKPOINTS) if self.run_dir is not None else None
                saved = f"the last good checkpoint is {good.path}" if good else "no checkpoint was saved"
                raise NonFiniteLoss(f"{error}; {saved} (nothing after it was written)") from None
            finally:
                self.plot()
        if signals.received is not None:
            name = signal.Signals(signals.received).name
            checkpointer = next((c for c in callbacks if isinstance(c, Checkpointer)), None)
            where = f"saved a checkpoint at step {checkpointer.saved_step}" if checkpointer else "no run folder: nothing saved"
            raise Interrupted(f"training stopped by {name}; {where}: run the same command to resume", signals.received)
        final = next(c for c in callbacks if isinstance(c, Validation)).last
        result.update(final or {})
        return result

    def resume(self, model: M) -> dict[str, Any]:
        """Restore the newest complete checkpoint into `model`; its state ({} for a new run).

        Broken checkpoints newer than it are skipped with a warning and set aside, and
        metrics rows written after it (by an attempt that died later) are dropped.
        """
        if self.run_dir is None:
            return {}
        root = self.run_dir / CHECKPOINTS
        checkpoint = ckpt.latest(root)
        ckpt.set_aside_after(root, checkpoint.step if checkpoint else 0)
        if checkpoint is None:  # rows of an attempt that died before its first checkpoint
            truncate_metrics(self.run_dir / METRICS_FILE, -1)
            return {}
        state = ckpt.restore(checkpoint, model, self.checkpoint_weights(model)[1])
        truncate_metrics(self.run_dir / METRICS_FILE, state["step"])
        print(f"resuming from {checkpoint.path} (step {state['step']})", flush=True)
        return state

    def checkpoint_weights(self, model: M) -> tuple[Any, Any]:
        """How checkpoints write and read the weights file (each a function of its path);
        `(None, None)`: the whole model and optimizer, `model.save_weights` / `load_weights`."""
        return None, None

    def plot(self) -> None:
        """Draw `metrics.png` in the run folder (when `logging/plot` and there are rows)."""
        if self.run_dir is not None and self.config.plot and (self.run_dir / METRICS_FILE).is_file() and multihost.is_primary():
            plot_run(self.run_dir)
