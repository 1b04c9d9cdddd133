"""The job registry: a plain dict from `family/kind/name` to a job class.

A user package adds its own jobs by assigning into `JOBS` in a module that theseus
imports: one named in the `THESEUS_PLUGINS` environment variable (comma-separated
module names) or registered under the `theseus.plugins` entry-point group.
"""

from theseus.experiments.gpt import PretrainGPT

JOBS: dict[str, type] = {
    "gpt/train/pretrain": PretrainGPT,
}
