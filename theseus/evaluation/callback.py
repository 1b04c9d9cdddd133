"""`EvaluationCallback`: run registered evaluations every N steps while a model trains."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from theseus.base import multihost
from theseus.config import write_atomic
from theseus.evaluation.base import Evaluation
from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.tasks import run_evaluations

EVALUATIONS_FILE = "evaluations.jsonl"


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluate the training model every `interval` optimizer steps and at the end.

    Each evaluation appends one row to `path` (a run's `evaluations.jsonl`):
    `{"step": s, "tokens": t, "SPEC/METRIC": value, ...}`, and its numbers go into the
    batch's logs under the same names. A resumed run first drops the rows after its
    `start_step` (written after the checkpoint it resumes from). The `LanguageModel` is
    built once, on the first evaluation; its compiled functions read the weights as they
    are at each call.

    Args:
        evaluations: `{spec: evaluation}` (see `theseus.evaluation.tasks.evaluations`).
        tokenizer: the run's tokenizer.
        interval: optimizer steps between evaluations.
        start_step / total_steps / micro_steps: as the trainer's other callbacks count.
        path: the JSONL file rows are appended to (None: logs only).
        tokens_per_step: for the `tokens` column.
        heldout: the run's validation batches, for `perplexity` without a source.
    """

    def __init__(
        self,
        evaluations: dict[str, Evaluation],
        tokenizer: Any,
        interval: int,
        start_step: int = 0,
        total_steps: int | None = None,
        micro_steps: int = 1,
        path: str | os.PathLike | None = None,
        tokens_per_step: int = 0,
        batch_size: int = 8,
        heldout: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
    ) -> None:
        super().__init__()
        self.evaluations, self.tokenizer = evaluations, tokenizer
        self.interval, self.start_step, self.total_steps, self.micro_steps = (
            interval,
            start_step,
            total_steps,
            micro_steps,
        )
        self.path = Path(path) if path is not None else None
        self.tokens_per_step, self.batch_size, self.heldout = tokens_per_step, batch_size, heldout
        self.history: list[dict[str, Any]] = []
        self._lm: LanguageModel | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.path is not None and self.path.is_file() and multihost.is_primary():
            rows = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["step"] <= self.start_step]
            write_atomic(self.path, "".join(line + "\n" for line in kept))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (batch + 1) % self.micro_steps:
            return
        step = self.start_step + (batch + 1) // self.micro_steps
        if step % self.interval == 0 or step == self.total_steps:
            row = self.evaluate(step)
            if logs is not None:
                logs.update({k: v for k, v in row.items() if k not in ("step", "tokens")})

    def evaluate(self, step: int) -> dict[str, Any]:
        model = self.model  # on JAX, reading it syncs the training state into the variables
        if self._lm is None:
            self._lm = LanguageModel(model, self.tokenizer, batch_size=self.batch_size, heldout=self.heldout)
        results = run_evaluations(self._lm, self.evaluations)
        row = {"step": step, "tokens": step * self.tokens_per_step}
        row.update(
            {f"{spec}/{metric}": value for spec, metrics in results.items() for metric, value in metrics.items()}
        )
        self.history.append(row)
        if self.path is not None and multihost.is_primary():  # multi-host: process 0 writes
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row
