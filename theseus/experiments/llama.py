"""Jobs for Llama models in Hugging Face format (`LlamaForCausalLM`)."""

from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.huggingface import HFCompat
from theseus.training.finetune import HFFinetuner
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig


class PretrainLlama(HFTrainer[HFCompat]):
    """Pretrain a Llama from a Hugging Face config.json: random weights, the folder's tokenizer."""

    MODEL = HFCompat
    CONFIG = HFTrainerConfig
    MODEL_TYPES = ("llama",)


class FinetuneLlama(HFFinetuner[HFCompat]):
    """Fine-tune a Llama checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf."""

    MODEL = HFCompat
    CONFIG = HFFinetuneConfig
    MODEL_TYPES = ("llama",)


class EvaluateLlama(HFEvaluator[HFCompat]):
    """Loss and perplexity of a Llama checkpoint in Hugging Face format on held-out text."""

    MODEL = HFCompat
    MODEL_TYPES = ("llama",)
