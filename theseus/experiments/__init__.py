"""The job registry: a plain dict from `family/kind/name` to a job class.

The native GPT's jobs are in `experiments.gpt`; the Hugging Face-format families' jobs
are made from the table in `experiments.huggingface` (`JOBS["llama/train/pretrain"]` is
`PretrainLlama`). A user package adds its own jobs by assigning into `JOBS` in a module
that theseus imports: one named in the `THESEUS_PLUGINS` environment variable
(comma-separated module names) or registered under the `theseus.plugins` entry-point group.
"""

from theseus.experiments.data import Tokenize
from theseus.experiments.gpt import EvaluateGPT, FinetuneGPT, PretrainGPT
from theseus.experiments.huggingface import HF_JOBS

JOBS: dict[str, type] = {
    "data/tokenize": Tokenize,
    "gpt/train/pretrain": PretrainGPT,
    "gpt/train/finetune": FinetuneGPT,
    "gpt/eval/evaluate": EvaluateGPT,
    **HF_JOBS,
}
