"""Multiple choice by log-likelihood, scored as lm-evaluation-harness scores it."""

from __future__ import annotations

import numpy as np

from theseus.config import ConfigError
from theseus.evaluation.base import Evaluation, read_jsonl
from theseus.evaluation.language_model import LanguageModel


class MultipleChoice(Evaluation):
    """Accuracy on a JSONL file of `{"context": str, "choices": [str, ...], "gold": int}`.

    Each choice is scored as the continuation `delimiter + choice` of the context (the
    harness's `target_delimiter`, a space by default). `acc`: the choice with the highest
    log-likelihood is the gold one; `acc_norm`: the same after dividing each
    log-likelihood by its choice's length in characters (the harness's length
    normalisation).

    Args:
        path: the JSONL file.
        delimiter: put between the context and each choice.
    """

    name = "multiple_choice"

    def __init__(self, path: str | None = None, delimiter: str = " ") -> None:
        self.path, self.delimiter = path, delimiter
        self.rows = read_jsonl(path, ("context", "choices", "gold"), self.name)
        for number, row in enumerate(self.rows, start=1):
            choices, gold = row["choices"], row["gold"]
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
                raise ConfigError(f"{path}: example {number}: 'choices' must be a list of non-empty strings")
            if not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise ConfigError(
                    f"{path}: example {number}: 'gold' must be an index into its {len(choices)} choices, got {gold!r}"
                )

    def loglikelihoods(self, lm: LanguageModel) -> list[list[float]]:
        """Per example, the log-likelihood of each choice."""
        pairs = [(row["context"], self.delimiter + choice) for row in self.rows for choice in row["choices"]]
        scores = iter(logprob for logprob, _ in lm.loglikelihood(pairs))
        return [[next(scores) for _ in row["choices"]] for row in self.rows]

    def __call__(self, lm: LanguageModel) -> dict[str, float]:
        correct = correct_norm = 0
        for row, scores in zip(self.rows, self.loglikelihoods(lm)):
            scores = np.asarray(scores)
            lengths = np.asarray([len(choice) for choice in row["choices"]], dtype=float)
            correct += int(np.argmax(scores) == row["gold"])
            correct_norm += int(np.argmax(scores / lengths) == row["gold"])
        n = len(self.rows)
        return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}
