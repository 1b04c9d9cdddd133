"""Building blocks shared by every model family, each weight with its logical axes."""

from theseus.model.layers.attention import CausalSelfAttention
from theseus.model.layers.dense import Dense, Embedding
from theseus.model.layers.mlp import MLP, GatedMLP
from theseus.model.layers.moe import MoEMLP
from theseus.model.layers.norms import LayerNorm, RMSNorm
from theseus.model.layers.rotary import apply_rotary, rotary_tables

__all__ = [
    "CausalSelfAttention",
    "Dense",
    "Embedding",
    "GatedMLP",
    "LayerNorm",
    "MLP",
    "MoEMLP",
    "RMSNorm",
    "apply_rotary",
    "rotary_tables",
]
