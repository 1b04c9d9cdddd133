"""Jobs for GPT-2 models in Hugging Face format (`GPT2LMHeadModel`)."""

from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.huggingface import HFCompat
from theseus.training.finetune import HFFinetuner
from theseus.training.huggingface import HFFinetuneConfig, HFTrainer, HFTrainerConfig


class PretrainGPT2(HFTrainer[HFCompat]):
    """Pretrain a GPT-2 from a Hugging Face config.json: random weights, the folder's tokenizer."""

    MODEL = HFCompat
    CONFIG = HFTrainerConfig
    MODEL_TYPES = ("gpt2",)


class FinetuneGPT2(HFFinetuner[HFCompat]):
    """Fine-tune a GPT-2 checkpoint in Hugging Face format on chats or text (all weights, some, or LoRA); writes RUN/hf."""

    MODEL = HFCompat
    CONFIG = HFFinetuneConfig
    MODEL_TYPES = ("gpt2",)


class EvaluateGPT2(HFEvaluator[HFCompat]):
    """Loss and perplexity of a GPT-2 checkpoint in Hugging Face format on held-out text."""

    MODEL = HFCompat
    MODEL_TYPES = ("gpt2",)
