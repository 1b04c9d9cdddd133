"""Model families, one file each; import them from here."""

from theseus.model.models.causal_lm import IGNORE_INDEX, CausalLM
from theseus.model.models.gpt import GPT
from theseus.model.models.llama import Llama

__all__ = ["CausalLM", "GPT", "IGNORE_INDEX", "Llama"]
