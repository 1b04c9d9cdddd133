"""Verifiable rewards: a completion and its prompt's row -> a number, named in a config.

`grpo/reward` names one:

- `exact_match`: 1.0 when the completion equals the row's answer, surrounding whitespace
  aside (the `exact_match` evaluation's comparison, `theseus.evaluation.exact_match.matches`);
- `regex:PATTERN`: 1.0 when PATTERN is found in the completion (`re.search`); `{answer}` in
  PATTERN stands for the row's answer, escaped (e.g. `regex:^\\s*{answer}\\b`);
- `MODULE:FUNCTION`: a Python function `FUNCTION(completion, row) -> float` of an importable
  module (e.g. `my_rewards:length_penalty`), given the completion text and the whole JSONL row.

The completion is the generated text cut before the first of the `until` strings.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from theseus.config import ConfigError
from theseus.evaluation.exact_match import matches

Reward = Callable[[str, dict[str, Any]], float]
"""`reward(completion, row)`: the completion's text and its prompt's JSONL row."""


def cut(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the `until` strings (the whole of it when none occurs)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def reward_function(spec: str, answer_key: str = "answer", key: str = "grpo/reward") -> Reward:
    """The reward `spec` names (see the module's docstring); a ConfigError naming `key` if none."""
    if spec == "exact_match":
        return lambda completion, row: float(matches(completion, row[answer_key]))
    if spec.startswith("regex:"):
        pattern = spec[len("regex:") :]
        try:
            re.compile(pattern.replace("{answer}", ""))
        except re.error as error:
            raise ConfigError(f"{key}: {pattern!r} is not a regular expression: {error}") from None
        return lambda completion, row: float(
            re.search(pattern.replace("{answer}", re.escape(str(row.get(answer_key, "")))), completion) is not None
        )
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"{key}: {spec!r} is none of exact_match, regex:PATTERN or MODULE:FUNCTION")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ConfigError(f"{key}: cannot import module {module!r} ({error})") from None
    except AttributeError:
        raise ConfigError(f"{key}: module {module!r} has no function {name!r}") from None
    if not callable(found):
        raise ConfigError(f"{key}: {spec} is not a function")
    return found


def score(reward: Reward, completions: Sequence[str], rows: Sequence[dict[str, Any]], key: str = "grpo/reward"):
    """`reward` of each completion with its row, as floats (a function's bad return value: one ConfigError)."""
    values = []
    for completion, row in zip(completions, rows):
        value = reward(completion, row)
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: the reward function returned {value!r}, not a number") from None
    return values
