"""Jobs for Qwen2 models in Hugging Face format (`Qwen2ForCausalLM`)."""

from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.huggingface import HFCompat
from theseus.training.finetune import HFFinetuner
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig


class PretrainQwen2(HFTrainer[HFCompat]):
    """Pretrain a Qwen2 from a Hugging Face config.json: random weights, the folder's tokenizer."""

    MODEL = HFCompat
    CONFIG = HFTrainerConfig
    MODEL_TYPES = ("qwen2",)


class FinetuneQwen2(HFFinetuner[HFCompat]):
    """Fine-tune a Qwen2 checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf."""

    MODEL = HFCompat
    CONFIG = HFFinetuneConfig
    MODEL_TYPES = ("qwen2",)


class EvaluateQwen2(HFEvaluator[HFCompat]):
    """Loss and perplexity of a Qwen2 checkpoint in Hugging Face format on held-out text."""

    MODEL = HFCompat
    MODEL_TYPES = ("qwen2",)
