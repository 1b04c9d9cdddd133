"""Jobs for Mistral models in Hugging Face format (`MistralForCausalLM`)."""

from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.huggingface import HFCompat
from theseus.training.finetune import HFFinetuner
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig


class PretrainMistral(HFTrainer[HFCompat]):
    """Pretrain a Mistral from a Hugging Face config.json: random weights, the folder's tokenizer."""

    MODEL = HFCompat
    CONFIG = HFTrainerConfig
    MODEL_TYPES = ("mistral",)


class FinetuneMistral(HFFinetuner[HFCompat]):
    """Fine-tune a Mistral checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf."""

    MODEL = HFCompat
    CONFIG = HFFinetuneConfig
    MODEL_TYPES = ("mistral",)


class EvaluateMistral(HFEvaluator[HFCompat]):
    """Loss and perplexity of a Mistral checkpoint in Hugging Face format on held-out text."""

    MODEL = HFCompat
    MODEL_TYPES = ("mistral",)
