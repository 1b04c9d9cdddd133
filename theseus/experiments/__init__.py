"""The job registry: a plain dict from `family/kind/name` to a job class.

A user package adds its own jobs by assigning into `JOBS` in a module that theseus
imports: one named in the `THESEUS_PLUGINS` environment variable (comma-separated
module names) or registered under the `theseus.plugins` entry-point group.
"""

from theseus.experiments.data import Tokenize
from theseus.experiments.gpt import EvaluateGPT, FinetuneGPT, PretrainGPT
from theseus.experiments.gpt2 import EvaluateGPT2, FinetuneGPT2, PretrainGPT2
from theseus.experiments.llama import EvaluateLlama, FinetuneLlama, PretrainLlama
from theseus.experiments.mistral import EvaluateMistral, FinetuneMistral, PretrainMistral
from theseus.experiments.qwen2 import EvaluateQwen2, FinetuneQwen2, PretrainQwen2
from theseus.experiments.qwen3 import EvaluateQwen3, FinetuneQwen3, PretrainQwen3

JOBS: dict[str, type] = {
    "data/tokenize": Tokenize,
    "gpt/train/pretrain": PretrainGPT,
    "gpt/train/finetune": FinetuneGPT,
    "gpt/eval/evaluate": EvaluateGPT,
    "gpt2/train/pretrain": PretrainGPT2,
    "gpt2/train/finetune": FinetuneGPT2,
    "gpt2/eval/evaluate": EvaluateGPT2,
    "llama/train/pretrain": PretrainLlama,
    "llama/train/finetune": FinetuneLlama,
    "llama/eval/evaluate": EvaluateLlama,
    "mistral/train/pretrain": PretrainMistral,
    "mistral/train/finetune": FinetuneMistral,
    "mistral/eval/evaluate": EvaluateMistral,
    "qwen2/train/pretrain": PretrainQwen2,
    "qwen2/train/finetune": FinetuneQwen2,
    "qwen2/eval/evaluate": EvaluateQwen2,
    "qwen3/train/pretrain": PretrainQwen3,
    "qwen3/train/finetune": FinetuneQwen3,
    "qwen3/eval/evaluate": EvaluateQwen3,
}
