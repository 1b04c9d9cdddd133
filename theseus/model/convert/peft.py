"""LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`) for
the projections of a family.

A family's tensor list (`Family.tensors`) already says which theseus kernels each Hugging
Face weight fills; a LoRA adapter changes those weights, so the same list names the PEFT
modules (`model.layers.0.self_attn.q_proj`, `transformer.h.0.attn.c_attn`) on export
(`adapter_files`) and import (`Adapter`). PEFT stores `lora_A` `(r, in)` and `lora_B`
`(out, r)` and adds `scale * B @ A` to a `torch.nn.Linear` weight `(out, in)`, or its
transpose to GPT-2's `Conv1D` `(in, out)` (`fan_in_fan_out`); theseus's A `(in, r)` and B
`(r, out)` add `scale * A @ B` to a kernel `(in, out)`, so both are transposed either way.
Where Hugging Face fuses what theseus keeps apart (GPT-2's `c_attn`: q, k, v), the theseus
adapters of the parts become one adapter of their summed rank (A stacked, B block-diagonal),
its rank and alpha in PEFT's `rank_pattern` / `alpha_pattern`, so the scale stays the same.
A model that started from a PEFT adapter (merged into its weights on load) exports that
adapter stacked with its own (`Adapter.before`), so the result goes over the bare base.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from theseus.config import ConfigError
from theseus.model.convert.base import Family, HFTensor
from theseus.model.convert.safetensors import SafetensorsFile

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
"""What PEFT puts before a module's name in the adapter's tensor names."""
LoRA = dict[str, tuple[np.ndarray, np.ndarray]]
"""theseus adapters: a kernel's path below the model (`block_0/attn/query/kernel`) -> (A, B)."""


def lora_modules(family: Family, kw: dict) -> dict[str, HFTensor]:
    """The projections a LoRA adapter may change: PEFT module name -> the weight it changes."""
    return {
        t.name.removesuffix(".weight"): t
        for t in family.tensors(kw)
        if t.name.endswith(".weight") and all(p.endswith("/kernel") for p in t.parts)
    }


def _out_width(tensor: HFTensor) -> int:
    return tensor.shape[0] if tensor.transpose else tensor.shape[1]


def _pairs(modules: dict[str, HFTensor], adapters: LoRA, rank: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PEFT's `(lora_A, lora_B)` of each module that theseus's `adapters` change."""
    pairs = {}
    for module, tensor in modules.items():
        present = [i for i, part in enumerate(tensor.parts) if part in adapters]
        if not present:
            continue
        width = _out_width(tensor) // len(tensor.parts)
        a = np.concatenate([adapters[tensor.parts[i]][0] for i in present], axis=1)  # (in, R)
        b = np.zeros((len(present) * rank, _out_width(tensor)), a.dtype)  # (R, out): block-diagonal
        for j, i in enumerate(present):
            b[j * rank : (j + 1) * rank, i * width : (i + 1) * width] = adapters[tensor.parts[i]][1]
        pairs[module] = (np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))
    unplaced = sorted(set(adapters) - {part for m in pairs for part in modules[m].parts})
    if unplaced:
        raise ConfigError(f"LoRA on {unplaced[0]} has no place in a PEFT adapter of this family")
    return pairs


def adapter_files(
    family: Family,
    kw: dict,
    adapters: LoRA,
    rank: int,
    alpha: float,
    base: str | None,
    start: Adapter | None = None,
):
    """`(tensors, config)` of the PEFT adapter equal to theseus's `adapters` (of `rank` and
    `alpha`), after the adapter `start` that the model's weights began from, if any."""
    modules = lora_modules(family, kw)
    pairs = _pairs(modules, adapters, rank)
    if start is not None:
        pairs = start.before(pairs, alpha / rank)
    tensors = {f"{PREFIX}{m}.lora_{k}.weight": w for m, pair in pairs.items() for k, w in zip("AB", pair)}
    other = {re.escape(m): a.shape[0] for m, (a, _) in pairs.items() if a.shape[0] != rank}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(pairs),
        "rank_pattern": other,  # fused projections, and a start adapter's ranks: the scale stays alpha / rank
        "alpha_pattern": {m: alpha * r / rank for m, r in other.items()},
        "fan_in_fan_out": not next(iter(modules.values())).transpose,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    return tensors, config


def read_config(folder: Path, key: str) -> dict:
    """A PEFT LoRA adapter's `adapter_config.json`, with its base named; `key` is the config
    key that gave the folder, for the one-line refusal."""
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: {path} is not readable JSON ({error})") from None
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
        raise ConfigError(f"{key}: {folder} holds an adapter of type {kind}; theseus reads LoRA adapters")
    if not config.get("base_model_name_or_path"):
        raise ConfigError(f"{key}: {path} names no base model (base_model_name_or_path)")
    return config


def _pattern(patterns: dict, module: str, default: float) -> float:
    """A module's value in PEFT's `rank_pattern` / `alpha_pattern` (matched as PEFT does)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


class Adapter:
    """The PEFT LoRA adapter in `folder` (its `config` read), over a base of `family` with
    constructor arguments `kw`: checked against the base when opened (a ConfigError line
    for a missing file, an unknown module or a shape of another base), and merged into
    the base's weights as they load (`merged`)."""

    def __init__(self, folder: Path, config: dict, family: Family, kw: dict, base: Path) -> None:
        self.folder, self.config = folder, config
        weights = folder / ADAPTER_FILE
        if not weights.is_file():
            raise ConfigError(f"{folder} has {ADAPTER_CONFIG} but no {ADAPTER_FILE}")
        modules, found = lora_modules(family, kw), {}
        header = SafetensorsFile(weights)
        for key in header.keys():
            match = re.fullmatch(rf"{re.escape(PREFIX)}(.+)\.lora_([AB])\.weight", key)
            if match is None or match.group(1) not in modules:
                raise ConfigError(
                    f"{weights}: '{key}' is not a LoRA weight of a projection of the {family.model_type} model in {base}"
                )
            found.setdefault(match.group(1), {})[match.group(2)] = key
        self.updates: dict[str, tuple[np.ndarray, np.ndarray, float, bool]] = {}
        with header:
            for module, keys in found.items():
                if set(keys) != {"A", "B"}:
                    raise ConfigError(f"{weights}: {module} has lora_{''.join(keys)} alone")
                self.updates[modules[module].name] = self._update(module, modules[module], header, keys, base)

    def _update(self, module: str, tensor: HFTensor, header: SafetensorsFile, keys: dict, base: Path):
        """`(A, B, scale)` of one module, its shapes checked against the base's weight."""
        a, b = (header.read(keys[k]).astype(np.float32) for k in "AB")
        rank = int(_pattern(self.config.get("rank_pattern"), module, self.config.get("r", 8)))
        alpha = float(_pattern(self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", 8)))
        inputs = tensor.shape[1] if tensor.transpose else tensor.shape[0]
        if a.shape != (rank, inputs) or b.shape != (_out_width(tensor), rank):
            raise ConfigError(
                f"{self.folder}: {module} has lora_A {a.shape} and lora_B {b.shape}, but the model in {base} "
                f"takes {inputs} inputs and gives {_out_width(tensor)} outputs there (rank {rank}): "
                "an adapter of another base (or an adapter_config.json that does not match its weights)"
            )
        scale = alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)
        return a, b, scale, tensor.transpose

    def before(self, pairs: dict, scale: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """PEFT `(lora_A, lora_B)` pairs of scale `scale` after this adapter, as one adapter: per
        module, this one's A stacked on theirs and its B (rescaled to `scale`) beside theirs."""
        pairs = dict(pairs)
        for name, (a, b, own, _) in self.updates.items():
            module = name.removesuffix(".weight")
            b = b * (own / scale)
            if module in pairs:
                a, b = np.concatenate([a, pairs[module][0]]), np.concatenate([b, pairs[module][1]], axis=1)
            pairs[module] = (a.astype(np.float32), b.astype(np.float32))
        return pairs

    def merged(self, name: str, array: np.ndarray) -> np.ndarray:
        """The checkpoint tensor `name` with the adapter's update added (as stored: `(out, in)`
        for a `Linear`, `(in, out)` for a `Conv1D`)."""
        if name not in self.updates:
            return array
        a, b, scale, linear = self.updates[name]
        update = scale * (b @ a)  # (out, in)
        return array.astype(np.float32) + (update if linear else update.T)
