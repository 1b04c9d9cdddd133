"""Model families, one file each; import them from here."""

from theseus.model.models.causal_lm import CausalLM
from theseus.model.models.gpt import GPT
from theseus.model.models.llama import Llama
from theseus.model.models.moe import MoE

__all__ = ["CausalLM", "GPT", "Llama", "MoE"]
