"""Job classes made from tables: every family gets the same kinds of job, each kind a subclass of
one base class for the family's model, so a new family is one row and a new kind of job one entry.

The native families' table is here (`NATIVE_KINDS`, `NATIVE_FAMILIES`); the Hugging Face families'
is in `experiments.huggingface`, which makes its jobs with the same `family_jobs`.
"""

from __future__ import annotations

import types

from theseus.experiments.sources import RunEvaluator
from theseus.model.models import GPT, MoE
from theseus.training import BaseTrainer, BaseTrainerConfig
from theseus.training.dpo import PreferenceTrainer
from theseus.training.finetune import NativeFinetuner
from theseus.training.grpo import NativeGRPOTrainer

JobKinds = dict[str, tuple[str, type, dict[str, object], str]]
"""A job key's `kind/name` -> its class name's prefix, base class, class attributes and docstring."""

NATIVE_KINDS: JobKinds = {
    "train/pretrain": (
        "Pretrain",
        BaseTrainer,
        {"CONFIG": BaseTrainerConfig},
        "Pretrain a {name} from scratch (byte-level tokens, WSD, AdamW); offline by default.",
    ),
    "train/finetune": (
        "Finetune",
        NativeFinetuner,
        {"CONFIG": BaseTrainerConfig},
        "Fine-tune a {name} run's checkpoint on chats or text (all weights, some, or LoRA); writes RUN/hf.",
    ),
    "train/dpo": (
        "DPO",
        PreferenceTrainer,
        {"CONFIG": BaseTrainerConfig},
        "DPO (or IPO) of a {name} run's checkpoint on preference pairs (all weights, some, or LoRA); writes RUN/hf.",
    ),
    "train/grpo": (
        "GRPO",
        NativeGRPOTrainer,
        {},
        "GRPO of a {name} run's checkpoint on prompts with verifiable rewards (all weights or LoRA); writes RUN/hf.",
    ),
    "eval/evaluate": (
        "Evaluate",
        RunEvaluator,
        {},
        "Evaluate a {name} run's checkpoint (perplexity, multiple choice, exact match, lm-eval); writes results.json.",
    ),
}

NATIVE_FAMILIES: dict[str, tuple[type, str]] = {
    "gpt": (GPT, "GPT"),
    "moe": (MoE, "MoE"),
}
"""A native family's job-key prefix -> its model class and its name in job summaries (`theseus jobs`)."""


def family_jobs(kinds: JobKinds, family: str, name: str, model: type, **attributes: object) -> dict[str, type]:
    """`{job key: job class}` for one family: e.g. `gpt/train/pretrain` -> `PretrainGPT`, a
    `BaseTrainer[GPT]` with `MODEL = GPT` (plus `attributes` and the kind's own)."""
    jobs = {}
    for kind, (prefix, base, extra, doc) in kinds.items():
        namespace = {"__doc__": doc.format(name=name), "__module__": __name__, "MODEL": model, **attributes, **extra}
        class_name = prefix + name.replace("-", "")
        jobs[f"{family}/{kind}"] = types.new_class(
            class_name, (base[model],), exec_body=lambda ns, namespace=namespace: ns.update(namespace)
        )
    return jobs


NATIVE_JOBS: dict[str, type] = {
    key: job
    for family, (model, name) in NATIVE_FAMILIES.items()
    for key, job in family_jobs(NATIVE_KINDS, family, name, model).items()
}
