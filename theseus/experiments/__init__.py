"""The job registry: a plain dict from `family/kind/name` to a job class.

Families' jobs are made from tables: the native families' (GPT, MoE) in `experiments.families`,
the Hugging Face-format families' in `experiments.huggingface` (`JOBS["llama/train/pretrain"]` is
`PretrainLlama`), keras-hub's in `experiments.keras_hub`. A user package adds its own jobs by
assigning into `JOBS` in a module that theseus imports: one named in the `THESEUS_PLUGINS`
environment variable (comma-separated module names) or registered under the `theseus.plugins`
entry-point group.
"""

from theseus.experiments.data import Tokenize
from theseus.experiments.families import NATIVE_JOBS
from theseus.experiments.huggingface import HF_JOBS
from theseus.experiments.keras_hub import KERAS_HUB_JOBS

JOBS: dict[str, type] = {
    "data/tokenize": Tokenize,
    **NATIVE_JOBS,
    **HF_JOBS,
    **KERAS_HUB_JOBS,
}
