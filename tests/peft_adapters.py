"""PEFT LoRA adapters made by `peft` itself over a tiny base folder (`hf_checkpoints`), and
logits of `peft` and `transformers` models, for the tests of theseus's PEFT format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TARGETS = {  # PEFT's module names; GPT-2's c_attn is q, k and v fused
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def base_model(folder: Path):
    """The base in `folder`, loaded by `transformers` as a PEFT user loads it."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager")


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.eval()(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def peft_adapter(base: Path, family: str, folder: Path, **settings):
    """`peft.get_peft_model` over the base in `base` (rank 4, alpha 8, every projection), A and
    B random (B starts at zero: the adapter would be a no-op), saved to `folder`; the model."""
    import peft
    import torch

    settings = {"fan_in_fan_out": family == "gpt2", **settings}
    targets = TARGETS.get(family, TARGETS["llama"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM", **settings)
    model = peft.get_peft_model(base_model(base), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(str(folder))
    return model.eval()
