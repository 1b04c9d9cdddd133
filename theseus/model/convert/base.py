"""What a family's conversion declares: its config mapping and, per checkpoint tensor,
the theseus weights it fills."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from theseus.config import ConfigError
from theseus.model.module import LogicalAxes


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One tensor of a Hugging Face checkpoint and the theseus weights it fills.

    Args:
        name: its name in the checkpoint, e.g. `model.layers.0.self_attn.q_proj.weight`.
        shape: its shape there.
        parts: paths of the theseus weights it fills, below the model (`block_0/attn/query/kernel`);
            several when Hugging Face fuses what theseus keeps apart (GPT-2's `c_attn`).
        transpose: stored `(out, in)` as `torch.nn.Linear` keeps it; theseus kernels are `(in, out)`.
        split_axis: the axis a fused tensor is cut along into equal `parts`.
        index: the entry of each part's leading axis this tensor is, where the checkpoint keeps
            one tensor per entry and theseus stacks them (a MoE layer's experts); None: the whole part.
    """

    name: str
    shape: tuple[int, ...]
    parts: tuple[str, ...]
    transpose: bool = False
    split_axis: int = 0
    index: int | None = None

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a theseus weight of `shape` takes this tensor (as its entry `index` if stacked)."""
        if self.index is None:
            return tuple(shape) == self.part_shape()
        return len(shape) > 1 and self.index < shape[0] and tuple(shape[1:]) == self.part_shape()

    def part_shape(self) -> tuple[int, ...]:
        shape = list(self.shape)
        shape[self.split_axis] //= len(self.parts)
        return tuple(reversed(shape)) if self.transpose else tuple(shape)

    def part_axes(self, axes: LogicalAxes | None) -> LogicalAxes | None:
        """The logical axes of each part, given those of the checkpoint tensor."""
        if axes is None:
            return None
        if len(axes) != len(self.shape):
            raise ConfigError(f"axes for '{self.name}' name {len(axes)} dimensions, the tensor has {len(self.shape)}")
        return tuple(reversed(axes)) if self.transpose else tuple(axes)

    def to_theseus(self, array: np.ndarray) -> list[np.ndarray]:
        parts = np.split(array, len(self.parts), axis=self.split_axis) if len(self.parts) > 1 else [array]
        return [p.T if self.transpose else p for p in parts]

    def to_hf(self, parts: list[np.ndarray]) -> np.ndarray:
        """This tensor from the whole theseus weights it fills (their entry `index` if stacked)."""
        parts = [p if self.index is None else p[self.index] for p in parts]
        parts = [p.T if self.transpose else p for p in parts]
        return np.concatenate(parts, axis=self.split_axis) if len(parts) > 1 else np.ascontiguousarray(parts[0])


@dataclasses.dataclass(frozen=True)
class Family:
    """A Hugging Face `model_type` and how it maps onto a theseus model class.

    Args:
        model_type: config.json's `model_type`.
        architecture: the class transformers builds (config.json's `architectures`).
        model: the theseus model class (`GPT`, `Llama`).
        prefix: the base-model prefix of tensor names, absent from checkpoints saved
            from the base model alone (`transformer.` for GPT-2, `model.` for Llama).
        from_hf: config.json -> the theseus model's constructor arguments.
        to_hf: constructor arguments -> config.json entries (ConfigError if it cannot
            express them).
        tensors: constructor arguments -> every tensor of the checkpoint.
        buffers: pattern of checkpoint entries that are not weights (old causal-mask or
            rotary buffers), skipped on load.
    """

    model_type: str
    architecture: str
    model: type
    prefix: str
    from_hf: Callable[[dict], dict]
    to_hf: Callable[[dict], dict]
    tensors: Callable[[dict], list[HFTensor]]
    buffers: str = r"$^"

    def is_buffer(self, name: str) -> bool:
        return re.fullmatch(self.buffers, name) is not None


def need(config: dict, key: str) -> Any:
    """`config[key]`, or a ConfigError naming the missing config.json entry."""
    if config.get(key) is None:
        raise ConfigError(f"config.json has no '{key}', which a {config.get('model_type')} model needs")
    return config[key]


def renamed(values: dict, names: dict[str, str]) -> dict:
    """The entries of `values` that `names` lists, each under its new name (theseus's
    constructor arguments as config.json spells them)."""
    return {new: values[old] for old, new in names.items()}


def refuse(condition: bool, message: str) -> None:
    """A ConfigError with `message` when `condition` holds (a setting theseus does not reproduce)."""
    if condition:
        raise ConfigError(message)
