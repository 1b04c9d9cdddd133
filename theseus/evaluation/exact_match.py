"""Exact match of a greedy generation against a reference answer."""

from __future__ import annotations

from collections.abc import Sequence

from theseus.evaluation.base import Evaluation, read_jsonl
from theseus.evaluation.language_model import LanguageModel


def matches(generated: str, answer: object) -> bool:
    """Whether `generated` equals `answer` (as text), surrounding whitespace aside."""
    return generated.strip() == str(answer).strip()


class ExactMatch(Evaluation):
    """Share of `{"prompt": str, "answer": str}` JSONL examples whose greedy continuation,
    cut before the first `until` string and stripped of surrounding whitespace, equals the
    stripped answer (lm-evaluation-harness's `generate_until` with `exact_match`).

    Args:
        path: the JSONL file.
        until: strings that end a generation (default: a newline).
        max_new_tokens: the longest generation.
    """

    name = "exact_match"

    def __init__(self, path: str | None = None, until: Sequence[str] = ("\n",), max_new_tokens: int = 32) -> None:
        self.path, self.until, self.max_new_tokens = path, tuple(until), max_new_tokens
        self.rows = read_jsonl(path, ("prompt", "answer"), self.name)

    def generations(self, lm: LanguageModel) -> list[str]:
        return lm.generate([row["prompt"] for row in self.rows], self.max_new_tokens, until=self.until)

    def __call__(self, lm: LanguageModel) -> dict[str, float]:
        hits = sum(matches(generated, row["answer"]) for row, generated in zip(self.rows, self.generations(lm)))
        return {"exact_match": hits / len(self.rows), "n": len(self.rows)}
