"""`HFEvaluator`: evaluate a model in Hugging Face format, the `FAMILY/eval/evaluate` job.

The model is `MODEL` (an `HFCompat`) built from `architecture/huggingface/model` with the
checkpoint's weights; the evaluations are `evaluation/tasks`, as for every evaluator.
`perplexity` scores held-out text cut as a training job cuts it (`data/source`, the same
tokenizer and held-out split), so a fine-tuned model and its starting checkpoint are
scored on the windows a training run validates on. Results go to `RUN/results.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, TypeVar

import numpy as np

from theseus.config import ConfigError, build, field
from theseus.data import read_text_source, split_tokens
from theseus.evaluation.evaluator import BaseEvaluator
from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.tasks import evaluations
from theseus.model.huggingface import KEY, HFCompat
from theseus.training.huggingface import AUTO, check_vocabulary, hf_tokenizer, open_checkpoint

M = TypeVar("M", bound=HFCompat)


@dataclasses.dataclass
class HFEvaluatorConfig:
    """What evaluating a Hugging Face-format model reads besides the model itself."""

    checkpoint: str = field(KEY, help="Hugging Face model folder (config.json + *.safetensors), or a hub id in the local cache")
    tasks: list[str] = field(
        "evaluation/tasks",
        default_factory=lambda: ["perplexity"],
        help="by name: perplexity (held-out data/source), perplexity:TEXT, multiple_choice:FILE.jsonl, exact_match:FILE.jsonl, lm_eval:TASK_OR_YAML",
    )
    batch_size: int = field("evaluation/batch_size", default=8, help="sequences per compiled call")
    max_length: Optional[int] = field("evaluation/max_length", default=None, help="tokens per scored window; null = architecture/block_size")
    tokens: int = field("evaluation/tokens", default=100_000, help="perplexity: score at most this many held-out tokens (whole windows); 0 = all")
    block_size: int = field("architecture/block_size", default=256, help="context length in tokens")
    source: str = field("data/source", default="embedded", help="'embedded' (Python's own docs), a text file or a folder")
    tokenizer: str = field("data/tokenizer", default=AUTO, help="auto = the model folder's tokenizer; byte; or a tokenizer folder")
    validation_fraction: float = field("data/validation_fraction", default=0.05, help="the held-out share a training job splits off; 1.0 = all of data/source")


class HFEvaluator(BaseEvaluator[M]):
    """Evaluate a Hugging Face-format model (`HFCompat`) on `evaluation/tasks`."""

    CONFIG: ClassVar[type] = HFEvaluatorConfig
    MODEL_TYPES: ClassVar[tuple[str, ...]] = ()
    """config.json `model_type`s this job accepts; empty = every supported one."""

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG, cls.MODEL]

    def __init__(self, values: dict[str, Any], run_dir: Optional[Path] = None) -> None:
        self.values = dict(values)
        self.config = build(self.CONFIG, values)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.config.batch_size < 1 or self.config.block_size < 1:
            raise ConfigError("evaluation/batch_size and architecture/block_size must be >= 1")
        self.hf = open_checkpoint(self.config.checkpoint, self.MODEL_TYPES, type(self).__name__)
        self.hf.plan()  # an evaluation needs the weights: all present, with the right shapes
        check_vocabulary(self.tokenizer(), self.hf)
        self.evaluations = evaluations(self.config.tasks)

    def tokenizer(self):
        return hf_tokenizer(self.config.tokenizer, self.hf)

    def load(self) -> LanguageModel:
        cfg = self.config
        model = build(self.MODEL, self.values, pretrained=True)
        return LanguageModel(
            model, self.tokenizer(), batch_size=cfg.batch_size, max_length=cfg.max_length or cfg.block_size,
            heldout=self.heldout,
        )

    def windows(self) -> np.ndarray:
        """The held-out windows (N, block_size + 1) of `data/source`, cut as training cuts
        them, at most `evaluation/tokens` targets."""
        cfg = self.config
        try:
            documents = read_text_source(cfg.source)
        except FileNotFoundError as error:
            raise ConfigError(f"data/source: {error}") from None
        tokens = self.tokenizer().encode_documents(documents)
        if cfg.validation_fraction < 1.0:
            try:
                tokens = split_tokens(tokens, cfg.validation_fraction, cfg.block_size)[1]
            except ValueError as error:
                raise ConfigError(f"data/source: {error}") from None
        window = cfg.block_size + 1
        count = len(tokens) // window
        if cfg.tokens:
            count = min(count, max(1, cfg.tokens // cfg.block_size))
        if count < 1:
            raise ConfigError(f"data/source gives {len(tokens)} held-out tokens: less than one window of {window}")
        return np.asarray(tokens[: count * window], dtype=np.int32).reshape(count, window)

    def heldout(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(inputs, targets)` batches of `windows()`, for `perplexity`."""
        windows = self.windows()
        for start in range(0, len(windows), self.config.batch_size):
            batch = windows[start : start + self.config.batch_size]
            yield batch[:, :-1], batch[:, 1:]
