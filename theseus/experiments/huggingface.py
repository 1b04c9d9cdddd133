"""The jobs of the families theseus reads in Hugging Face format, made from one table.

Each family gets the same three jobs, which differ only in the config.json `model_type`
they accept: `MODEL_TYPE/train/pretrain` (random weights from a config.json),
`MODEL_TYPE/train/finetune` and `MODEL_TYPE/eval/evaluate` (a checkpoint in the folder).
A family the model layer can read (`theseus.model.convert`) gets its jobs from one new row.
"""

from __future__ import annotations

import types

from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.huggingface import HFCompat
from theseus.training.finetune import HFFinetuner
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig

HF_FAMILIES: dict[str, str] = {
    "gpt2": "GPT-2",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
}
"""config.json `model_type` -> the family's name in job summaries (`theseus jobs`)."""

JOB_KINDS: dict[str, tuple[str, type, dict[str, object], str]] = {
    "train/pretrain": (
        "Pretrain",
        HFTrainer[HFCompat],
        {"CONFIG": HFTrainerConfig},
        "Pretrain a {name} from a Hugging Face config.json: random weights, the folder's tokenizer.",
    ),
    "train/finetune": (
        "Finetune",
        HFFinetuner[HFCompat],
        {"CONFIG": HFFinetuneConfig},
        "Fine-tune a {name} checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf.",
    ),
    "eval/evaluate": (
        "Evaluate",
        HFEvaluator[HFCompat],
        {},
        "Loss and perplexity of a {name} checkpoint in Hugging Face format on held-out text.",
    ),
}
"""A job key's `kind/name` -> its class name's prefix, base class, class attributes and docstring."""


def family_jobs(model_type: str, name: str) -> dict[str, type]:
    """`{job key: job class}` for one family: e.g. `llama/train/pretrain` -> `PretrainLlama`."""
    jobs = {}
    for kind, (prefix, base, attributes, doc) in JOB_KINDS.items():
        namespace = {
            "__doc__": doc.format(name=name),
            "__module__": __name__,
            "MODEL": HFCompat,
            "MODEL_TYPES": (model_type,),
            **attributes,
        }
        class_name = prefix + name.replace("-", "")
        jobs[f"{model_type}/{kind}"] = types.new_class(class_name, (base,), exec_body=lambda ns: ns.update(namespace))
    return jobs


HF_JOBS: dict[str, type] = {
    key: job for model_type, name in HF_FAMILIES.items() for key, job in family_jobs(model_type, name).items()
}
