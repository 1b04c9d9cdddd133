"""A theseus `LanguageModel` as an lm-evaluation-harness model (the optional `eval` extra).

    import lm_eval
    from theseus.evaluation.harness import HarnessLM
    from theseus.experiments.sources import load
    lm_eval.simple_evaluate(model=HarnessLM(load("runs/dev")), tasks=["my_task"], ...)

(`theseus.experiments.harness` registers the model by name: `model="theseus"`.)
`evaluate_harness` runs harness tasks, registered ones or task YAML files (a YAML over a
local JSONL needs no download), on a `LanguageModel`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from theseus.config import ConfigError
from theseus.evaluation.language_model import LanguageModel

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "seed")


class HarnessLM(LM):
    """The harness's three requests answered by a theseus `LanguageModel`.

    `loglikelihood` and `loglikelihood_rolling` are `LanguageModel.loglikelihood` and
    `rolling_loglikelihood` (tokenized as the harness's Hugging Face model does);
    `generate_until` generates greedily unless the task asks to sample, stopping at the
    task's `until` strings and the tokenizer's EOS, for at most `max_gen_toks` tokens
    (capped so that at least one prompt token fits the model's context).

    Args:
        lm: the model and tokenizer (`theseus.experiments.sources.load` opens a folder as one).
        max_gen_toks: the default generation length.
    """

    def __init__(self, lm: LanguageModel, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.lm = lm
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.lm.loglikelihood([request.args for request in requests])

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return self.lm.rolling_loglikelihood([request.args[0] for request in requests])

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}  # requests with the same settings generate together
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        results: list[str] = [""] * len(requests)
        for indices in groups.values():
            until, max_new, settings = self._settings(dict(requests[indices[0]].args[1]))
            texts = self.lm.generate([requests[i].args[0] for i in indices], max_new, until=until, **settings)
            for index, text in zip(indices, texts):
                results[index] = text
        return results

    def _settings(self, kwargs: dict[str, Any]) -> tuple[list[str], int, dict[str, Any]]:
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        until.append(self.lm.tokenizer.decode([self.lm.tokenizer.eos_id]))
        max_new = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.lm.model.block_size - 1)
        do_sample = bool(kwargs.pop("do_sample", False))
        settings = {key: kwargs.pop(key) for key in SAMPLING_KEYS if key in kwargs}
        if not do_sample:
            settings["temperature"] = 0.0
        if kwargs:
            raise ConfigError(f"the theseus harness model does not support generation settings {sorted(kwargs)}")
        return [u for u in until if u], max_new, settings


def task_names(tasks: Sequence[str]) -> tuple[list[str], list[str]]:
    """The folders of the task YAML files among `tasks`, and every task's name (a YAML's
    `task:`; any other entry is a task the harness knows)."""
    folders, names = [], []
    for task in tasks:
        path = Path(task).expanduser()
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"lm_eval task file not found: {path}")
            config = yaml.safe_load(path.read_text()) or {}
            if not isinstance(config, dict) or "task" not in config:
                raise ConfigError(f"lm_eval task file {path} has no `task:` name")
            if str(path.parent.resolve()) not in folders:
                folders.append(str(path.parent.resolve()))
            names.append(str(config["task"]))
        else:
            names.append(task)
    return folders, names


def evaluate_harness(lm: LanguageModel, tasks: Sequence[str], limit: int | None = None) -> dict[str, dict[str, Any]]:
    """Run harness `tasks` (names or task YAML files) on `lm`; per task, its metrics
    as the harness reports them, without the `,none` filter suffix."""
    folders, names = task_names(tasks)
    # Only YAML files: the harness's own few thousand tasks need not be indexed (slow).
    every_yaml = all(Path(task).suffix in (".yaml", ".yml") for task in tasks)
    manager = TaskManager(include_path=folders or None, include_defaults=not every_yaml)
    output = simple_evaluate(
        model=HarnessLM(lm), tasks=names, task_manager=manager, limit=limit, bootstrap_iters=0, log_samples=False
    )
    results = {}
    for task, metrics in output["results"].items():
        results[task] = {
            key.removesuffix(",none"): value for key, value in metrics.items() if isinstance(value, (int, float))
        }
    return results
