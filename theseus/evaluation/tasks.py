"""The evaluation registry: a plain dict from a name to an `Evaluation` class.

A config names an evaluation as `"kind"` or `"kind:argument"` (e.g. `"perplexity"`,
`"multiple_choice:data/copy.jsonl"`, `"lm_eval:my_task.yaml"`); the argument is the
class's one optional constructor argument. A user package registers its own by assigning
into `EVALUATIONS` (a class, or any callable taking the optional argument).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from theseus.config import ConfigError, did_you_mean
from theseus.evaluation.base import Evaluation
from theseus.evaluation.exact_match import ExactMatch
from theseus.evaluation.harness_task import HarnessTask
from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.multiple_choice import MultipleChoice
from theseus.evaluation.text_perplexity import Perplexity

EVALUATIONS: dict[str, Callable[..., Evaluation]] = {
    "perplexity": Perplexity,
    "multiple_choice": MultipleChoice,
    "exact_match": ExactMatch,
    "lm_eval": HarnessTask,
}


def evaluation(spec: str) -> Evaluation:
    """The evaluation a config names (`"kind"` or `"kind:argument"`); data is checked now."""
    kind, _, argument = spec.partition(":")
    if kind not in EVALUATIONS:
        hint = did_you_mean(kind, EVALUATIONS, cutoff=0.5)
        raise ConfigError(f"unknown evaluation '{kind}'{hint}; known: {', '.join(sorted(EVALUATIONS))}")
    return EVALUATIONS[kind](argument) if argument else EVALUATIONS[kind]()


def evaluations(specs: Iterable[str]) -> dict[str, Evaluation]:
    """`{spec: evaluation}` for a config's list; a spec given twice is an error."""
    built: dict[str, Evaluation] = {}
    for spec in specs:
        if spec in built:
            raise ConfigError(f"evaluation '{spec}' is listed twice")
        built[spec] = evaluation(spec)
    return built


def run_evaluations(lm: LanguageModel, named: dict[str, Evaluation]) -> dict[str, dict[str, float]]:
    """`{spec: {metric: value}}`, each evaluation run once on `lm`."""
    return {spec: dict(evaluate(lm)) for spec, evaluate in named.items()}
