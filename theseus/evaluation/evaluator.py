"""`BaseEvaluator`: the `FAMILY/eval/evaluate` job: evaluate a checkpoint, write results.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Generic, Optional, TypeVar

from theseus.config import build, field, write_atomic
from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.loading import describe, load
from theseus.evaluation.tasks import evaluations, run_evaluations

M = TypeVar("M")
RESULTS_FILE = "results.json"


@dataclasses.dataclass
class EvaluatorConfig:
    """What an evaluation job reads (the model's own config comes with its checkpoint)."""

    checkpoint: str = field("evaluation/checkpoint", help="a training run folder (its newest checkpoint), RUN/checkpoints/step_N, or a Hugging Face model folder")
    tasks: list[str] = field(
        "evaluation/tasks",
        default_factory=lambda: ["perplexity"],
        help="by name: perplexity (the run's held-out set), perplexity:TEXT, multiple_choice:FILE.jsonl, exact_match:FILE.jsonl, lm_eval:TASK_OR_YAML",
    )
    batch_size: int = field("evaluation/batch_size", default=8, help="sequences per compiled call")
    max_length: Optional[int] = field("evaluation/max_length", default=None, help="tokens per scored window; null = the model's context")


class BaseEvaluator(Generic[M]):
    """Evaluate a `MODEL` checkpoint on `evaluation/tasks`; results.json in the run folder."""

    MODEL: ClassVar[type]
    CONFIG: ClassVar[type] = EvaluatorConfig

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG]

    def __init__(self, values: dict[str, Any], run_dir: Optional[Path] = None) -> None:
        self.config = build(self.CONFIG, values)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        describe(self.config.checkpoint)  # a wrong path or a bad task file fails before anything runs
        self.evaluations = evaluations(self.config.tasks)

    def load(self) -> LanguageModel:
        cfg = self.config
        return load(cfg.checkpoint, batch_size=cfg.batch_size, max_length=cfg.max_length, model_class=self.MODEL)

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
