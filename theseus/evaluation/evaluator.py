"""`BaseEvaluator`: the `FAMILY/eval/evaluate` job: open a model, run its evaluations, write results.json."""

from __future__ import annotations

import abc
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from theseus.config import build, field, write_atomic
from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.tasks import evaluations, run_evaluations

M = TypeVar("M")
RESULTS_FILE = "results.json"


@dataclasses.dataclass
class EvaluatorConfig:
    """What an evaluation job reads besides the model's own config: where the model is,
    what to run on it and in which batches."""

    checkpoint: str = field(
        "evaluation/checkpoint",
        help="a training run folder (its newest checkpoint), RUN/checkpoints/step_N, or a Hugging Face model folder",
    )
    tasks: list[str] = field(
        "evaluation/tasks",
        default_factory=lambda: ["perplexity"],
        help="by name: perplexity (the held-out set the model's training job validates on), perplexity:TEXT, multiple_choice:FILE.jsonl, exact_match:FILE.jsonl, lm_eval:TASK_OR_YAML",
    )
    batch_size: int = field("evaluation/batch_size", default=8, bounds=">= 1", help="sequences per compiled call")
    max_length: int | None = field(
        "evaluation/max_length",
        default=None,
        bounds=">= 1",
        help="tokens per scored window; null = the model's context (architecture/block_size)",
    )


class BaseEvaluator(Generic[M], abc.ABC):
    """Evaluate a `MODEL` on `evaluation/tasks`; results.json in the run folder.

    A subclass says where its model comes from (`load`); its constructor checks what it
    can (the model's folder, the tasks' files) so that bad input fails before anything runs.
    """

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type] = EvaluatorConfig

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG]

    def __init__(self, values: dict[str, Any], run_dir: Path | None = None) -> None:
        self.values = dict(values)
        self.config = build(self.CONFIG, values)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.evaluations = evaluations(self.config.tasks)

    @abc.abstractmethod
    def load(self) -> LanguageModel:
        """The model and tokenizer to evaluate."""

    def run(self) -> dict[str, dict[str, float]]:
        lm = self.load()
        results = run_evaluations(lm, self.evaluations)
        for spec, metrics in results.items():
            print(f"{spec}: " + ", ".join(f"{k}={_short(v)}" for k, v in metrics.items()), flush=True)
        if self.run_dir is not None:
            document = {"checkpoint": str(self.config.checkpoint), "results": results}
            write_atomic(self.run_dir / RESULTS_FILE, json.dumps(document, indent=1) + "\n")
        return results


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
