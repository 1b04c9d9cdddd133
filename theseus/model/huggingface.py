"""Hugging Face checkpoints in and out: `HFCompat`, `LogicalAxes`, `save_hf`.

`HFCompat` is a theseus model whose architecture and weights come from a folder in Hugging
Face format (config.json + safetensors, sharded or not) or a hub id already in the local
Hugging Face cache; nothing is ever downloaded. config.json's `model_type` picks the
family (`theseus.model.convert.FAMILIES`), which builds the matching theseus model from
theseus's own layers, so every weight has logical axes and shards like a native one.
Weights stream from the safetensors files one tensor at a time into the Keras variables.
`save_hf` writes any model of these families back as a folder `transformers` loads, and
`save_peft` its LoRA adapters as a folder `peft` loads over the base. A PEFT adapter folder
goes wherever a model folder does: it stands for its base with the adapter merged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras.src.backend.common.stateless_scope import in_stateless_scope

from theseus.config import ConfigError, field
from theseus.model.convert import HFTensor, family_of, model_kwargs
from theseus.model.convert.checkpoint import (
    AUTO,
    KEY,
    HFCheckpoint,
    check_vocabulary,
    copy_tokenizer,
    open_checkpoint,
    resolve_folder,
    tokenizer_name,
)
from theseus.model.convert.peft import ADAPTER_CONFIG, ADAPTER_FILE, adapter_files
from theseus.model.convert.safetensors import numpy_dtype, write_shards
from theseus.model.models.causal_lm import CausalLM
from theseus.model.module import LogicalAxes, abstract_build

_PRETRAINED = contextvars.ContextVar("theseus_hf_pretrained", default=True)


@contextlib.contextmanager
def random_init() -> Any:
    """`HFCompat` models created inside start from random weights (config.json alone),
    unless given `pretrained=`: how a pretraining job builds through the shared trainer."""
    token = _PRETRAINED.set(False)
    try:
        yield
    finally:
        _PRETRAINED.reset(token)


def relative_paths(model: keras.Layer) -> dict[str, keras.Variable]:
    """`model`'s variables by path below the model itself (`block_0/attn/query/kernel`)."""
    marker = f"/{model.name}/"
    return {("/" + v.path).rsplit(marker, 1)[1]: v for v in model.weights}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class HFCompat(CausalLM):
    """A model in Hugging Face format: architecture from config.json, weights from safetensors.

    `id` (`architecture/huggingface/model`) names a local folder or a hub id already in
    the local Hugging Face cache. The architecture is a theseus family model (`GPT` for
    GPT-2, `Llama` for Llama, Mistral, Qwen2, Qwen3) held as `self.architecture`.

    Its weights are the architecture's, with the logical axes its layers declare, and
    `sharding` (the causal-LM default, tensor parallelism) maps them to mesh axes, as for a
    native model. A subclass may override either: `axes(name)` returning a tuple gives the
    logical axes of the checkpoint tensor `name` as Hugging Face stores it, which then
    replace those of the theseus weights it fills (transposed with it); None keeps them.

    Args:
        id: the folder or hub id.
        pretrained: load the checkpoint's weights (False: random initialisation from
            config.json alone, for pretraining; the folder then needs no weights).
            Default: True, or False inside `random_init()`.

    Example:
        >>> model = HFCompat(id="path/to/Qwen2.5-0.5B")
        >>> logits = model(token_ids, padding_mask=mask)
        >>> model.save_pretrained("out/qwen-finetuned")
    """

    id: str = field(KEY, help="Hugging Face model folder (config.json + *.safetensors), or a hub id in the local cache")

    def __init__(self, pretrained: bool | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name or _snake_case(type(self).__name__), **kwargs)
        self.checkpoint = HFCheckpoint(self.id)
        self.family = self.checkpoint.family
        self.pretrained = _PRETRAINED.get() if pretrained is None else pretrained
        self.architecture = self.family.model(**self.checkpoint.kwargs)
        self.build()

    @classmethod
    def axes(cls, x: str) -> LogicalAxes | None:
        """An override of the logical axes of the checkpoint tensor named `x`, one per
        dimension as the checkpoint stores it; None (the default) keeps the axes the
        theseus weights it fills declare."""
        return None

    def build(self, input_shape: Any = None) -> None:
        if self.architecture.built:
            return
        load = self.pretrained and not in_stateless_scope()  # an abstract build allocates nothing
        plan = self.checkpoint.plan() if load else None  # every tensor there with its shape, before anything is built
        with abstract_build() if load else contextlib.nullcontext():  # no random values to throw away
            self.architecture.build((None, None))
        variables = relative_paths(self.architecture)
        self._match(variables)
        if load:
            self.checkpoint.load(plan, variables)
        self.built = True

    def _match(self, variables: dict[str, keras.Variable]) -> None:
        """Check that checkpoint tensors fill every weight with its shape, and give the weights
        the axes a subclass's `axes` names for their tensor (transposed with it)."""
        filled: set[str] = set()
        for tensor in self.checkpoint.tensors():
            axes = tensor.part_axes(self.axes(tensor.name))
            for part in tensor.parts:
                variable = variables[part]
                if not tensor.fits(variable.shape):
                    raise ConfigError(
                        f"'{tensor.name}' fills {variable.path} {tuple(variable.shape)} with {tensor.part_shape()}"
                    )
                if axes is not None:  # a stacked weight keeps the axis of its entries
                    variable.logical_axes = axes if tensor.index is None else (variable.logical_axes[0], *axes)
                filled.add(part)
        unfilled = sorted(set(variables) - filled)
        if unfilled:
            raise ConfigError(f"{self.family.model_type}: no checkpoint tensor fills {unfilled[:3]}")

    def call(self, token_ids, padding_mask=None, training=False):
        if isinstance(token_ids, dict):
            token_ids, padding_mask = token_ids["token_ids"], token_ids.get("padding_mask")
        extra = {} if padding_mask is None else {"padding_mask": padding_mask}
        return self.architecture(token_ids, training=training, **extra)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return self.architecture.compute_output_shape(input_shape)

    @property
    def vocab_size(self) -> int:
        return self.architecture.vocab_size

    @property
    def expert_axis(self) -> str | None:
        """The architecture's experts' logical axis (a `MoE`'s), for expert parallelism; else None."""
        return getattr(self.architecture, "expert_axis", None)

    @property
    def block_size(self) -> int:
        """The longest context the architecture takes (config.json's max positions)."""
        return self.architecture.block_size

    def init_cache(self, batch_size: int, max_length: int):
        """The architecture's key/value cache, for `theseus.generation`."""
        return self.architecture.init_cache(batch_size, max_length)

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask):
        """The architecture's cached forward pass, for `theseus.generation`."""
        return self.architecture.call_with_cache(token_ids, cache, cache_index, padding_mask)

    def save_pretrained(self, folder: str | os.PathLike, **kwargs: Any) -> Path:
        """`save_hf(self, folder, **kwargs)`."""
        return save_hf(self, folder, **kwargs)


# ----------------------------------------------------------------------------- export


def save_hf(
    model: keras.Model,
    folder: str | os.PathLike,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    max_shard_size: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a Hugging Face folder that `transformers` loads with `from_pretrained`.

    Args:
        model: an `HFCompat`, or a native `GPT` (as GPT-2) or `Llama` (as the first of
            llama, mistral, qwen2, qwen3 that expresses its settings); trained, fine-tuned
            or sharded (sharded weights are gathered tensor by tensor).
        folder: the folder to create. It is written beside, then renamed into place.
        tokenizer: a tokenizer folder to copy, an object with a Hugging Face `.tokenizer`
            (theseus's `HFTokenizer`), or False for none; default: an `HFCompat`'s own folder's.
        dtype: the stored dtype; default: the dtype of the checkpoint an `HFCompat` loaded,
            else the variables' (float32).
        max_shard_size: bytes per safetensors file; more files get an index, as transformers writes.
        overwrite: replace an existing non-empty `folder`.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(f"{folder} exists and is not empty; pass overwrite=True to replace it")
    source = model.checkpoint if isinstance(model, HFCompat) else None
    architecture = model.architecture if source is not None else model
    family = source.family if source is not None else family_of(architecture)
    if not architecture.built:
        architecture.build((None, None))
    kwargs = model_kwargs(architecture)
    variables = relative_paths(architecture)
    if dtype is None:
        dtype = (source.dtype() if source is not None and model.pretrained else None) or variables[
            "wte/embeddings"
        ].dtype
    config = {
        k: v
        for k, v in (source.config if source is not None else {}).items()
        if k not in ("rope_theta", "rope_scaling", "torch_dtype")
    }
    config.update(
        family.to_hf(kwargs), model_type=family.model_type, architectures=[family.architecture], dtype=str(dtype)
    )
    tensors = {tensor.name: tensor for tensor in family.tensors(kwargs)}

    array = _arrays(tensors, variables)
    with _written_in_place_of(folder) as temporary:
        write_shards(
            temporary, [(t.name, t.shape) for t in tensors.values()], array, numpy_dtype(dtype), max_shard_size
        )
        (temporary / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        copy_tokenizer(temporary, tokenizer, source)
        if source is not None and (source.folder / "generation_config.json").is_file():
            shutil.copy2(source.folder / "generation_config.json", temporary)
    return folder


def _arrays(tensors: dict[str, HFTensor], variables: dict[str, keras.Variable]) -> Callable[[str], np.ndarray]:
    """`name -> array` of each checkpoint tensor, gathered from the devices tensor by tensor (a
    stacked weight once for all its entries, the experts of a MoE layer, which follow one another)."""
    gathered = functools.lru_cache(maxsize=1)(lambda path: keras.ops.convert_to_numpy(variables[path].value))
    return lambda name: tensors[name].to_hf([gathered(part) for part in tensors[name].parts])


def save_peft(
    model: keras.Model,
    folder: str | os.PathLike,
    adapters: dict[str, tuple[np.ndarray, np.ndarray]],
    rank: int,
    alpha: float,
    base: str | None = None,
) -> Path:
    """Write LoRA adapters of `model` as a PEFT adapter folder (`adapter_config.json` +
    `adapter_model.safetensors`) that `peft.PeftModel.from_pretrained` loads over the base.

    Args:
        model: an `HFCompat`, `GPT` or `Llama` (its family names the PEFT modules), its
            adapters merged or not. An `HFCompat` loaded from a PEFT adapter folder has that
            adapter in its weights: it goes into the one written, stacked with `adapters`.
        adapters: `kernel variable path -> (A (in, rank), B (rank, out))`, as `Dense.enable_lora` makes them.
        rank, alpha: the adapters' rank and alpha (scale `alpha / rank`).
        base: the base model's folder or hub id, for `base_model_name_or_path`.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    architecture = model.architecture if isinstance(model, HFCompat) else model
    family = model.checkpoint.family if isinstance(model, HFCompat) else family_of(architecture)
    paths = {variable.path: path for path, variable in relative_paths(architecture).items()}
    ours = {paths[kernel]: pair for kernel, pair in adapters.items()}
    start = model.checkpoint.adapter if isinstance(model, HFCompat) and model.pretrained else None
    tensors, config = adapter_files(family, model_kwargs(architecture), ours, rank, alpha, base, start)
    with _written_in_place_of(folder) as temporary:
        save_file(tensors, str(temporary / ADAPTER_FILE), metadata={"format": "pt"})
        (temporary / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


@contextlib.contextmanager
def _written_in_place_of(folder: Path) -> Iterator[Path]:
    """A fresh folder beside `folder` to write into, renamed to `folder` (replacing it) once
    everything is written: a failed write leaves the old one untouched."""
    temporary = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


__all__ = [
    "AUTO",
    "KEY",
    "HFCheckpoint",
    "HFCompat",
    "LogicalAxes",
    "check_vocabulary",
    "open_checkpoint",
    "random_init",
    "resolve_folder",
    "tokenizer_name",
    "save_hf",
    "save_peft",
]
