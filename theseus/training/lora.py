"""LoRA and freezing for fine-tuning: which weights train, and checkpoints of those alone.

LoRA is Keras's own mechanism (`enable_lora(rank, alpha)`, as on `keras.layers.Dense`)
on theseus's `Dense` projections whose path matches one of `lora/targets` (regular
expressions searched in paths such as `gpt/block_0/attn/query`): the kernel freezes and
two adapters, A `(in, rank)` and B `(rank, out)`, learn `alpha / rank * A @ B`. Every
other weight is frozen too, unless `finetune/trainable` or `finetune/train_last_blocks`
names it. A model that brings its own layers names them instead (`lora_projections()`: a
keras-hub backbone's Keras `Dense` / `EinsumDense`, with Keras's `enable_lora(rank, lora_alpha)`).
`merge_lora` folds the adapters into the kernels for export; `adapters` reads them
out first, for the PEFT adapter a LoRA fine-tune writes beside its merged export.

A run that trains a small part of its model checkpoints that part alone
(`save_trainable` / `load_trainable`: the trainable weights by path, plus the optimizer's
variables), with a reference to the base it started from.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from theseus.base import multihost
from theseus.config import ConfigError, field
from theseus.model.layers.dense import Dense

ADAPTERS = ("lora_kernel_a", "lora_kernel_b")
FORMAT = "theseus-trainable-weights"
_BLOCK = re.compile(r"(?:^|/)block_(\d+)/")


@dataclasses.dataclass
class LoraConfig:
    """Low-rank adapters on the projections `targets` names."""

    enabled: bool = field("lora/enabled", default=False, help="train LoRA adapters instead of the weights themselves")
    rank: int = field("lora/rank", default=8, bounds=">= 1", help="adapter rank r")
    alpha: float = field("lora/alpha", default=16.0, bounds="> 0", help="the update is scaled by alpha / rank")
    targets: list[str] = field(
        "lora/targets",
        default_factory=lambda: ["attn", "mlp"],
        help="regular expressions searched in projection paths: [attn, mlp] = every attention and MLP projection; [query, value] = those two",
    )


@dataclasses.dataclass
class FreezeConfig:
    """Which weights train in a fine-tune (besides LoRA adapters); by default all of them."""

    train_last_blocks: int = field(
        "finetune/train_last_blocks",
        default=0,
        bounds=">= 0",
        help="train only the last N transformer blocks (0 = no such limit)",
    )
    trainable: list[str] = field(
        "finetune/trainable",
        default_factory=list,
        help="regular expressions searched in weight paths (e.g. [norm, wte]): these train too, the rest is frozen",
    )


def kernel(layer: Dense) -> keras.Variable:
    """A projection's kernel variable (a Keras layer with adapters computes `kernel`: its variable is `_kernel`)."""
    return layer.kernel if isinstance(layer, Dense) else layer._kernel


def layer_path(layer: Dense) -> str:
    """A projection's path, e.g. `gpt/block_0/attn/query` (its kernel's, less the name)."""
    return kernel(layer).path.rsplit("/", 1)[0]


def projections(model: keras.Layer) -> list[Dense]:
    """Every built `Dense` projection inside `model` that may carry adapters, in layer order; a model
    that brings its own layers names them (`lora_projections()`: keras-hub's Keras `Dense`, `EinsumDense`)."""
    if hasattr(model, "lora_projections"):
        return model.lora_projections()
    layers = model._flatten_layers(include_self=False)
    return [layer for layer in layers if isinstance(layer, Dense) and layer.adaptable and layer.built]


def _searcher(patterns: Sequence[str], key: str):
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as error:
        raise ConfigError(f"{key}: not a regular expression: {error}") from None
    return lambda path: any(p.search(path) for p in compiled)


def enable_lora(model: keras.Layer, rank: int, alpha: float, targets: Sequence[str]) -> list[Dense]:
    """Adapters of `rank` on each projection whose path matches a pattern of `targets`;
    every other weight of `model` is frozen. Returns the layers that got adapters."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"lora/rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ConfigError(f"lora/alpha must be > 0, got {alpha!r}")
    matches = _searcher(targets, "lora/targets")
    candidates = projections(model)
    chosen = [layer for layer in candidates if matches(layer_path(layer))]
    if not chosen:
        known = ", ".join(layer_path(layer) for layer in candidates[:6])
        raise ConfigError(f"lora/targets {list(targets)} match no projection (they are named like: {known}, ...)")
    for variable in model.weights:
        variable.trainable = False
    for layer in chosen:
        if isinstance(layer, Dense):
            layer.enable_lora(rank, alpha)
        else:  # a model that brings its own layers adapts them (`KerasHubLM.enable_projection_lora`)
            model.enable_projection_lora(layer, rank, alpha)
    return chosen


def lora_layers(model: keras.Layer) -> list[Dense]:
    return [layer for layer in projections(model) if layer.lora_enabled]


@dataclasses.dataclass
class Adapters:
    """A model's LoRA adapters as arrays, all of one `rank` and `alpha`: `kernel path -> (A, B)`,
    and the Hugging Face folder they adapt (`base`), for the PEFT export."""

    rank: int
    alpha: float
    weights: dict[str, tuple[np.ndarray, np.ndarray]]
    base: str | None = None


def adapters(model: keras.Layer, base: str | None = None) -> Adapters:
    """`model`'s adapters, gathered from every process (a collective: every process calls it)."""
    layers = lora_layers(model)
    with multihost.gathered([v for layer in layers for v in (layer.lora_kernel_a, layer.lora_kernel_b)]):
        weights = {
            kernel(layer).path: tuple(
                keras.ops.convert_to_numpy(v.value) for v in (layer.lora_kernel_a, layer.lora_kernel_b)
            )
            for layer in layers
        }
    return Adapters(layers[0].lora_rank, layers[0].lora_alpha, weights, base)


def merge_lora(model: keras.Layer) -> int:
    """Fold every adapter of `model` into its kernel (the model then has none); how many."""
    layers = lora_layers(model)
    for layer in layers:
        if isinstance(layer, Dense):
            layer.merge_lora()
        else:  # a model that brings its own layers merges them (`KerasHubLM.merge_projection`)
            model.merge_projection(layer)
    return len(layers)


def freeze(model: keras.Layer, train_last_blocks: int = 0, trainable: Sequence[str] = ()) -> None:
    """Train only the weights of the last `train_last_blocks` blocks and those matching a
    pattern of `trainable` (together); with neither, leave every weight trainable."""
    if train_last_blocks < 0:
        raise ConfigError(f"finetune/train_last_blocks must be >= 0, got {train_last_blocks}")
    if not train_last_blocks and not trainable:
        return
    matches = _searcher(trainable, "finetune/trainable")
    blocks = {int(m.group(1)) for v in model.weights if (m := _BLOCK.search(v.path))}
    if train_last_blocks > len(blocks):
        raise ConfigError(f"finetune/train_last_blocks={train_last_blocks} but the model has {len(blocks)} blocks")
    first = len(blocks) - train_last_blocks if train_last_blocks else len(blocks)
    for pattern in trainable:
        if not any(re.search(pattern, v.path) for v in model.weights):
            raise ConfigError(
                f"finetune/trainable: {pattern!r} matches no weight (they are named like {model.weights[0].path})"
            )
    for variable in model.weights:
        block = _BLOCK.search(variable.path)
        variable.trainable = bool((block and int(block.group(1)) >= first) or matches(variable.path))


def count(variables: Sequence[keras.Variable]) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


# ----------------------------------------------------------------------------- checkpoints


def save_trainable(model: keras.Model, path: Path) -> None:
    """Write `model`'s trainable weights (by path) and its optimizer's variables to `path` (HDF5)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        for variable in model.trainable_weights:
            f.create_dataset(f"weights/{variable.path}", data=keras.ops.convert_to_numpy(variable.value))
        optimizer = model.optimizer
        for i, variable in enumerate(optimizer.variables if optimizer is not None and optimizer.built else []):
            f.create_dataset(f"optimizer/{i:06d}", data=keras.ops.convert_to_numpy(variable.value))


def is_trainable_file(path: Path) -> bool:
    """Whether `path` was written by `save_trainable` (not by Keras's `save_weights`)."""
    import h5py

    with h5py.File(path, "r") as f:
        return f.attrs.get("format") == FORMAT


def load_trainable(model: keras.Model, path: Path) -> None:
    """Restore what `save_trainable` wrote into a model set up the same way (its base
    already loaded): every trainable weight and, if it is built, the optimizer's state."""
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ConfigError(f"{path} holds a whole model, not the trainable weights of a fine-tune")
        saved = f["weights"]
        for variable in model.trainable_weights:
            if variable.path not in saved:
                raise ConfigError(f"{path} has no {variable.path}: it was saved with other LoRA or freezing settings")
            value = saved[variable.path][()]
            if value.shape != tuple(variable.shape):
                raise ConfigError(f"{path}: {variable.path} is {value.shape}, the model's is {tuple(variable.shape)}")
            variable.assign(value)
        stored = f["optimizer"] if "optimizer" in f else {}
        optimizer = model.optimizer
        if optimizer is not None and optimizer.built and stored:
            if len(stored) != len(optimizer.variables):
                raise ConfigError(
                    f"{path} holds {len(stored)} optimizer variables, the optimizer has {len(optimizer.variables)}"
                )
            for i, variable in enumerate(optimizer.variables):
                variable.assign(stored[f"{i:06d}"][()])


def trainable_summary(model: keras.Model) -> dict[str, Any]:
    """Trainable and total parameter counts, and the projections with adapters."""
    return {
        "trainable": count(model.trainable_weights),
        "total": count(model.weights),
        "lora_layers": [layer_path(layer) for layer in lora_layers(model)],
    }
