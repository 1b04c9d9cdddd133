"""`lm_eval:TASK`: an lm-evaluation-harness task as a theseus evaluation."""

from __future__ import annotations

from theseus.config import ConfigError
from theseus.evaluation.base import Evaluation
from theseus.evaluation.language_model import LanguageModel


class HarnessTask(Evaluation):
    """One lm-evaluation-harness task (a name it knows, or a task YAML file), run
    through `theseus.evaluation.harness`; needs the `eval` extra (`lm_eval`)."""

    name = "lm_eval"

    def __init__(self, task: str | None = None) -> None:
        if not task:
            raise ConfigError("evaluation 'lm_eval' needs a task: write it as 'lm_eval:TASK' or 'lm_eval:PATH.yaml'")
        try:
            from theseus.evaluation import harness
        except ImportError as error:
            raise ConfigError(
                f"evaluation 'lm_eval:{task}' needs lm-evaluation-harness ({error}): pip install 'theseus[eval]'"
            ) from None
        self.task, self.harness = task, harness
        (self.task_name,) = harness.task_names([task])[1]  # a bad YAML file fails now

    def __call__(self, lm: LanguageModel) -> dict[str, float]:
        results = self.harness.evaluate_harness(lm, [self.task])
        return results[self.task_name]
