"""DPO jobs (`FAMILY/train/dpo`): fine-tuning on preference pairs with a preference loss.

A DPO run is a fine-tune (`theseus.training.tuning.FineTuning`: a start from trained
weights, freezing or LoRA, checkpoints of the trainable part, a merged export) whose data
are preference pairs (`theseus.data.preference`) and whose loss is DPO, conservative DPO or
IPO (`theseus.training.preference`, keys `dpo/...`). The reference model is the starting
weights: before training, in one pass, the log-probability of every chosen and rejected
answer under them is computed and kept in the run folder (`RUN/reference_logps.npz`), so
no second model is held and a resumed run reads them back instead of computing them again.
With LoRA the starting model is the base alone (the adapters start at zero).

`training/batch_size` counts rows, two a pair (chosen and rejected), so it must be even;
steps are `training/tokens // (batch_size * block_size)`, as for every job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import keras
import numpy as np

from theseus.base import multihost
from theseus.config import ConfigError, field, write_atomic
from theseus.data.preference import PreferenceBatches, PreferencePairs, read_preference_records, split_pairs
from theseus.generation import compile_for_backend
from theseus.model.huggingface import HFCompat
from theseus.model.module import Module
from theseus.training import lora
from theseus.training.accumulation import accumulation
from theseus.training.checkpoint import digest
from theseus.training.config import BaseTrainerConfig
from theseus.training.data import Batches
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer
from theseus.training.norms import track_norms
from theseus.training.optimizers import build_optimizer
from theseus.training.preference import DPOConfig, PreferenceLoss, preference_metrics, sequence_logps
from theseus.training.sources import ModelSource
from theseus.training.trainer import BaseTrainer
from theseus.training.tuning import FinetuneConfig, FineTuning

M = TypeVar("M", bound=Module)

REFERENCE_FILE = "reference_logps.npz"


@dataclasses.dataclass
class PreferenceStart(FinetuneConfig):
    """Where a DPO run starts, what of it trains; its data are preference pairs."""

    data: Literal["preference"] = field(
        "finetune/data",
        default="preference",
        help="preference: JSONL of {prompt or messages, chosen, rejected} (theseus.data.preference)",
    )


class PreferenceTuning(FineTuning):
    """`FineTuning` on preference pairs: the reference log-probabilities, the batches, the loss."""

    CONFIGS = (PreferenceStart, DPOConfig, lora.LoraConfig)

    def __init__(self, values: dict[str, Any], config: BaseTrainerConfig, source: ModelSource, job: str) -> None:
        super().__init__(values, config, source, job)
        self.dpo: DPOConfig = self.chat  # FineTuning's second section: here the dpo/... keys
        for key, rows in (("batch_size", config.batch_size), ("micro_batch_size", config.micro_batch_size)):
            if rows is not None and rows % 2:
                raise ConfigError(f"training/{key}={rows} must be even: a pair is two rows (chosen, rejected)")
        if config.mixture:
            raise ConfigError("data/mixture: a DPO run reads one file of preference pairs, data/source")
        if "perplexity" in config.evaluations:  # its held-out batches are pairs, not text
            raise ConfigError(
                "logging/evaluations: a DPO run has no held-out text for perplexity; name one: perplexity:FILE"
            )
        self.records = read_preference_records(config.source)  # bad data is refused before the run starts
        self.split = split_pairs(len(self.records), config.validation_fraction)  # training, held-out pairs
        for name, part in zip(("training", "held-out"), self.split):
            if len(part) < config.batch_size // 2:
                raise ConfigError(
                    f"data/source: {len(part)} {name} pairs, fewer than the {config.batch_size // 2} pairs of a batch"
                )
        path = Path(config.source).expanduser()
        self.data_key = f"{digest([path])[:16]}|{config.block_size}|{config.validation_fraction}"
        self.pairs: PreferencePairs | None = None
        self.reference: np.ndarray | None = None

    def loss(self) -> PreferenceLoss:
        return PreferenceLoss(self.dpo.beta, self.dpo.loss, self.dpo.label_smoothing)

    def metrics(self) -> list[keras.metrics.Metric]:
        return preference_metrics(self.dpo.beta)

    def tokenized(self, config: BaseTrainerConfig, tokenizer: Any) -> PreferencePairs:
        if self.pairs is None:
            pad_id = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
            pad_id = tokenizer.eos_id if pad_id is None else int(pad_id)
            self.pairs = PreferencePairs(self.records, tokenizer, config.block_size, pad_id)
        return self.pairs

    def prepare(self, model: keras.Model, config: BaseTrainerConfig, tokenizer: Any, folder: Path | None) -> None:
        """The reference log-probabilities: read from the run folder when they were computed for
        this data and base, else computed now with `model` as it starts (nothing resumed yet)."""
        key = json.dumps([self.data_key, self.base, config.precision, tokenizer.name])
        path = folder / REFERENCE_FILE if folder is not None else None
        if path is not None and path.is_file():
            with np.load(path) as saved:
                if str(saved["key"]) == key:
                    self.reference = saved["logps"]
                    return
        rows = config.micro_batch_size or config.batch_size  # what one training pass holds
        self.reference = reference_logps(model, self.tokenized(config, tokenizer), rows)
        if path is not None and multihost.is_primary():
            buffer = io.BytesIO()
            np.savez(buffer, logps=self.reference, key=np.array(key))
            write_atomic(path, buffer.getvalue())

    def batches(
        self, config: BaseTrainerConfig, tokenizer: Any, total_steps: int, start_step: int, vocab_size: int | None
    ) -> Batches:
        if self.reference is None:
            raise RuntimeError("PreferenceTuning.prepare (the reference log-probabilities) must run before batches")
        pairs = self.tokenized(config, tokenizer)
        train, held_out = self.split
        per_batch = config.batch_size // 2
        validation_steps = max(1, min(config.validation_batches, len(held_out) // per_batch))
        return Batches(
            PreferenceBatches(
                pairs,
                train,
                self.reference,
                per_batch,
                total_steps - start_step,
                seed=config.seed,
                start_step=start_step,
            ),
            PreferenceBatches(pairs, held_out, self.reference, per_batch, validation_steps, shuffle=False),
            hashlib.sha256(self.data_key.encode()).hexdigest()[:16],
            kind="preference pairs",
        )


class NativePreferenceTuning(PreferenceTuning):
    """`PreferenceTuning` of a native family: it starts from a theseus run (`finetune/init_from`)."""

    NEEDS_RUN = True


def reference_logps(model: keras.Model, pairs: PreferencePairs, rows_per_call: int) -> np.ndarray:
    """log p of each pair's chosen and rejected answer under `model` (no dropout): (N, 2) float32.

    Calls take `rows_per_call` rows (the training pass's size); the last is filled with
    repeated pairs, so one shape compiles."""
    score = compile_for_backend(model, lambda inputs, targets: sequence_logps(model(inputs, training=False), targets))
    per_call = max(1, rows_per_call // 2)
    logps = np.empty((len(pairs), 2), np.float32)
    for start in range(0, len(pairs), per_call):
        inputs, targets = pairs.rows(np.arange(start, start + per_call) % len(pairs))
        scored = keras.ops.convert_to_numpy(score(inputs, targets)).reshape(-1, 2)
        logps[start : start + per_call] = scored[: len(pairs) - start]
    return logps


class PreferenceTrainer(BaseTrainer[M]):
    """Train on preference pairs with a DPO or IPO loss (`dpo/...`); the reference log-probabilities
    are computed from the starting weights (or read back) before a resume loads anything."""

    TUNING: ClassVar[type] = NativePreferenceTuning

    def exports(self) -> bool:
        return True

    def compile(self, model: M, schedule) -> None:
        self.tuning.prepare(model, self.config, self.tokenizer(), self.folder.path)
        optimizer = build_optimizer(
            self.optimizer(), **accumulation(schedule, self.micro_steps), **self.config.optimizer_arguments()
        )
        model.compile(
            optimizer=track_norms(optimizer),
            loss=self.tuning.loss(),
            metrics=self.tuning.metrics(),
            jit_compile=self.config.jit_compile,
        )


class HFPreferenceTrainer(PreferenceTrainer[M], HFTrainer[M]):
    """DPO of a Hugging Face-format model (`HFCompat`) from its folder's weights (or a run of the
    same job, `finetune/init_from`); writes `RUN/hf` (merged) and, for LoRA, `RUN/peft`."""

    MODEL: ClassVar[type] = HFCompat
    CONFIG: ClassVar[type] = HFFinetuneConfig
    TUNING: ClassVar[type] = PreferenceTuning

    def exports(self) -> bool:
        return self.config.export
