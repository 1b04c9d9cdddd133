"""`HFEvaluator`: evaluate a model in Hugging Face format, the `FAMILY/eval/evaluate` job.

The model is `MODEL` (an `HFCompat`) built from `architecture/huggingface/model` with the
checkpoint's weights; the evaluations are `evaluation/tasks`, as for every evaluator.
`perplexity` scores the held-out windows a training job validates on (the same `data/...`
keys, tokenizer and split, in the same order), so a fine-tuned model and its starting
checkpoint are scored on the same tokens. Results go to `RUN/results.json`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from theseus.base.sharding import build_abstractly
from theseus.config import ConfigError, build, field
from theseus.data import load_tokenizer
from theseus.data.config import DataConfig, training_data
from theseus.data.loader import ValidationWindows
from theseus.evaluation.evaluator import BaseEvaluator, EvaluatorConfig
from theseus.evaluation.language_model import LanguageModel
from theseus.model.huggingface import AUTO, KEY, HFCompat, check_vocabulary, open_checkpoint, tokenizer_name

M = TypeVar("M", bound=HFCompat)


@dataclasses.dataclass
class HFEvaluatorConfig(DataConfig, EvaluatorConfig):
    """What evaluating a Hugging Face-format model reads besides the model itself; its
    `data/...` keys are a training job's, so `perplexity` sees the same held-out set."""

    checkpoint: str = field(
        KEY, help="Hugging Face model folder (config.json + *.safetensors), or a hub id in the local cache"
    )
    tokens: int = field(
        "evaluation/tokens",
        default=100_000,
        bounds=">= 0",
        help="perplexity: score at most this many held-out tokens (whole batches); 0 = all",
    )
    block_size: int = field("architecture/block_size", default=256, bounds=">= 1", help="context length in tokens")
    tokenizer: str = field(
        "data/tokenizer", default=AUTO, help="auto = the model folder's tokenizer; byte; or a tokenizer folder"
    )


class HFEvaluator(BaseEvaluator[M]):
    """Evaluate a Hugging Face-format model (`HFCompat`) on `evaluation/tasks`."""

    CONFIG: ClassVar[type] = HFEvaluatorConfig
    MODEL_TYPES: ClassVar[tuple[str, ...]] = ()
    """config.json `model_type`s this job accepts; empty = every supported one."""

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG, cls.MODEL]

    def __init__(self, values: dict[str, Any], run_dir: Path | None = None) -> None:
        super().__init__(values, run_dir)
        if self.config.batch_size < 1 or self.config.block_size < 1:
            raise ConfigError("evaluation/batch_size and architecture/block_size must be >= 1")
        self.hf = open_checkpoint(self.config.checkpoint, self.MODEL_TYPES, type(self).__name__)
        self.hf.plan()  # an evaluation needs the weights: all present, with the right shapes
        build_abstractly(lambda: build(self.MODEL, self.values, pretrained=True))  # a model it can build (no memory)
        check_vocabulary(self.tokenizer(), self.hf)
        self.config.check_sources()  # the held-out text `perplexity` reads

    def tokenizer(self):
        return load_tokenizer(tokenizer_name(self.config.tokenizer, self.hf))

    def load(self) -> LanguageModel:
        cfg = self.config
        model = build(self.MODEL, self.values, pretrained=True)
        return LanguageModel(
            model,
            self.tokenizer(),
            batch_size=cfg.batch_size,
            max_length=cfg.max_length or cfg.block_size,
            heldout=self.heldout,
        )

    def heldout(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(inputs, targets)` batches for `perplexity`: the first validation batches of a
        training job with this `data/...`, `block_size` and `batch_size`."""
        cfg = self.config
        data = training_data(cfg, self.tokenizer(), cfg.block_size)
        batches = math.ceil(cfg.tokens / (cfg.batch_size * cfg.block_size)) if cfg.tokens else None
        try:
            validation = ValidationWindows(
                data.validation, cfg.block_size, cfg.batch_size, batches, weights=data.weights
            )
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None
        return (validation[i] for i in range(len(validation)))
