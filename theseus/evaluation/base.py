"""`Evaluation`: one named measurement of a `LanguageModel`, returning a flat dict of numbers."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from theseus.config import ConfigError
from theseus.data.sources import jsonl_records
from theseus.evaluation.language_model import LanguageModel


class Evaluation(abc.ABC):
    """A measurement: `evaluation(lm)` -> `{"metric": value, ...}`.

    Subclasses take their data in `__init__` (one optional string argument, so that a
    config can name them as `"kind"` or `"kind:argument"`, see `theseus.evaluation.tasks`)
    and check it there, so a bad path fails before any model is loaded.
    """

    name: str = ""

    @abc.abstractmethod
    def __call__(self, lm: LanguageModel) -> dict[str, float]:
        """The metrics of `lm` on this evaluation's data."""


def read_jsonl(path: str | None, required: tuple[str, ...], kind: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file, each checked to hold `required` keys (one ConfigError line)."""
    if not path:
        raise ConfigError(f"evaluation '{kind}' needs a JSONL file: write it as '{kind}:PATH'")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"evaluation '{kind}': no file {file}")
    rows = []
    for number, row in jsonl_records(file, f"evaluation '{kind}'"):  # bad UTF-8 or JSON: file and line
        missing = [key for key in required if not isinstance(row, dict) or key not in row]
        if missing:
            raise ConfigError(f"{file}:{number}: missing key(s) {missing} (each line needs {list(required)})")
        rows.append(row)
    if not rows:
        raise ConfigError(f"evaluation '{kind}': {file} holds no examples")
    return rows
