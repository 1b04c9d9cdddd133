"""Jobs for Qwen3 models in Hugging Face format (`Qwen3ForCausalLM`)."""

from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.huggingface import HFCompat
from theseus.training.finetune import HFFinetuner
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig


class PretrainQwen3(HFTrainer[HFCompat]):
    """Pretrain a Qwen3 from a Hugging Face config.json: random weights, the folder's tokenizer."""

    MODEL = HFCompat
    CONFIG = HFTrainerConfig
    MODEL_TYPES = ("qwen3",)


class FinetuneQwen3(HFFinetuner[HFCompat]):
    """Fine-tune a Qwen3 checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf."""

    MODEL = HFCompat
    CONFIG = HFFinetuneConfig
    MODEL_TYPES = ("qwen3",)


class EvaluateQwen3(HFEvaluator[HFCompat]):
    """Loss and perplexity of a Qwen3 checkpoint in Hugging Face format on held-out text."""

    MODEL = HFCompat
    MODEL_TYPES = ("qwen3",)
