"""The jobs of the families theseus reads in Hugging Face format, made from one table.

Each family gets the same jobs, which differ only in the config.json `model_type` they
accept: `MODEL_TYPE/train/pretrain` (random weights from a config.json), and
`MODEL_TYPE/train/finetune`, `train/dpo`, `train/grpo` and `eval/evaluate` (a checkpoint in the
folder). A family the model layer can read (`theseus.model.convert`) gets its jobs from one new row.
"""

from __future__ import annotations

from theseus.evaluation.huggingface import HFEvaluator
from theseus.experiments.families import JobKinds, family_jobs
from theseus.model.huggingface import HFCompat
from theseus.training.dpo import HFPreferenceTrainer
from theseus.training.finetune import HFFinetuner
from theseus.training.grpo import HFGRPOConfig, HFGRPOTrainer
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig

HF_FAMILIES: dict[str, str] = {
    "gpt2": "GPT-2",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "mixtral": "Mixtral",
    "qwen2_moe": "Qwen2-MoE",
    "qwen3_moe": "Qwen3-MoE",
}
"""config.json `model_type` -> the family's name in job summaries (`theseus jobs`)."""

JOB_KINDS: JobKinds = {
    "train/pretrain": (
        "Pretrain",
        HFTrainer,
        {"CONFIG": HFTrainerConfig},
        "Pretrain a {name} from a Hugging Face config.json: random weights, the folder's tokenizer.",
    ),
    "train/finetune": (
        "Finetune",
        HFFinetuner,
        {"CONFIG": HFFinetuneConfig},
        "Fine-tune a {name} checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf.",
    ),
    "train/grpo": (
        "GRPO",
        HFGRPOTrainer,
        {"CONFIG": HFGRPOConfig},
        "GRPO of a {name} checkpoint in Hugging Face format on prompts with verifiable rewards (all weights or LoRA); writes RUN/hf.",
    ),
    "train/dpo": (
        "DPO",
        HFPreferenceTrainer,
        {},
        "DPO (or IPO) of a {name} checkpoint in Hugging Face format on preference pairs (all weights, some, or LoRA); writes RUN/hf.",
    ),
    "eval/evaluate": (
        "Evaluate",
        HFEvaluator,
        {},
        "Loss and perplexity of a {name} checkpoint in Hugging Face format on held-out text.",
    ),
}
"""The Hugging Face families' kinds of job (`families.JobKinds`), each on a base for `HFCompat`."""


HF_JOBS: dict[str, type] = {
    key: job
    for model_type, name in HF_FAMILIES.items()
    for key, job in family_jobs(JOB_KINDS, model_type, name, HFCompat, MODEL_TYPES=(model_type,)).items()
}
