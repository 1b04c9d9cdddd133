"""Conversions between Hugging Face checkpoints and theseus models, one module per family.

`FAMILIES` maps config.json's `model_type` to its `Family`: how the config becomes a
theseus model's constructor arguments and back, and which theseus weights each
checkpoint tensor fills (whose own logical axes then shard it). `checkpoint` reads a
model folder; `safetensors` reads and writes the weight files.
"""

from __future__ import annotations

from typing import Any

from theseus.config import ConfigError, fields_of
from theseus.model.convert.base import Family, HFTensor
from theseus.model.convert.gpt2 import GPT2
from theseus.model.convert.llama import LLAMA, MISTRAL, QWEN2, QWEN3
from theseus.model.convert.moe import MIXTRAL, QWEN2_MOE, QWEN3_MOE

FAMILIES: dict[str, Family] = {
    family.model_type: family for family in (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, MIXTRAL, QWEN2_MOE, QWEN3_MOE)
}


def model_kwargs(model: Any) -> dict:
    """A theseus model's field values by attribute name (its constructor arguments)."""
    return {f.attr: getattr(model, f.attr) for f in fields_of(type(model))}


def family_of(model: Any) -> Family:
    """The first family that can express `model` (a `GPT`, `Llama` or `MoE`), or a ConfigError."""
    reasons = []
    # the families of the most derived class only: a MoE is a Llama, but a llama checkpoint has no experts
    ours = [f for f in FAMILIES.values() if isinstance(model, f.model)]
    for family in ours:
        if any(other.model is not family.model and issubclass(other.model, family.model) for other in ours):
            continue
        try:
            family.to_hf(model_kwargs(model))
            return family
        except ConfigError as error:
            reasons.append(f"{family.model_type}: {error}")
    if not reasons:
        raise ConfigError(f"{type(model).__name__} has no Hugging Face counterpart; supported: {', '.join(FAMILIES)}")
    raise ConfigError(f"{type(model).__name__} matches no Hugging Face family ({'; '.join(reasons)})")


__all__ = ["FAMILIES", "Family", "HFTensor", "family_of", "model_kwargs"]
