"""Hugging Face checkpoints in and out: `HFCompat`, `LogicalAxes`, `save_hf`.

`HFCompat` is a theseus model whose architecture and weights come from a folder in Hugging
Face format (config.json + safetensors, sharded or not) or a hub id already in the local
Hugging Face cache; nothing is ever downloaded. config.json's `model_type` picks the
family (`theseus.model.convert.FAMILIES`), which builds the matching theseus model from
theseus's own layers, so every weight has logical axes and shards like a native one.
Weights stream from the safetensors files one tensor at a time into the Keras variables.
`save_hf` writes any model of these families back as a folder `transformers` loads.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import keras
import numpy as np
from keras.src.backend.common.stateless_scope import in_stateless_scope

from theseus.base.axis import Axis
from theseus.config import ConfigError, field
from theseus.model.axes import Axes
from theseus.model.convert import FAMILIES, Family, HFTensor, family_of, model_kwargs
from theseus.model.convert.safetensors import SafetensorsFile
from theseus.model.models.causal_lm import CausalLM
from theseus.model.module import LogicalAxes, abstract_build

KEY = "architecture/huggingface/model"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
INDEX_FILE = "model.safetensors.index.json"
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


def resolve_folder(model_id: str) -> Path:
    """The local folder of `model_id`: a folder, or a hub id's snapshot in the local cache."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"{KEY}: {model_id} is a file, not a Hugging Face model folder")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except HFValidationError:
        raise ConfigError(f"{KEY}: no folder {model_id}") from None
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"{KEY}: '{model_id}' is neither a folder nor in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); theseus never downloads: fetch it first "
            f"(`hf download {model_id}`) or give a folder"
        ) from None


class HFCheckpoint:
    """A Hugging Face model folder: its config.json, family and safetensors files.

    Opening one checks everything that can be checked without reading weights; every
    problem is one ConfigError line.
    """

    def __init__(self, model_id: str) -> None:
        self.id = model_id
        self.folder = resolve_folder(model_id)
        config_file = self.folder / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"{KEY}: {self.folder} has no config.json, so it is not a Hugging Face model folder")
        try:
            self.config = json.loads(config_file.read_text())
        except ValueError as error:
            raise ConfigError(f"{config_file} is not valid JSON: {error}") from None
        model_type = self.config.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"{config_file}: model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
            )
        self.family: Family = FAMILIES[model_type]
        try:
            self.kwargs = self.family.from_hf(self.config)
        except ConfigError as error:
            raise ConfigError(f"{config_file}: {error}") from None
        self.files = self._weight_files()

    def _weight_files(self) -> list[Path]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as error:
                raise ConfigError(f"{index} is not a safetensors index ({error})") from None
            missing = [n for n in names if not (self.folder / n).is_file()]
            if missing:
                raise ConfigError(f"{index} lists {missing[0]}, which is not in {self.folder}")
            return [self.folder / n for n in names]
        return sorted(self.folder.glob("*.safetensors"))

    @property
    def model_type(self) -> str:
        return self.family.model_type

    def tensors(self) -> list[HFTensor]:
        return self.family.tensors(self.kwargs)

    def plan(self) -> list[tuple[Path, str, HFTensor]]:
        """`(file, name in the file, tensor)` for every tensor, checked against the
        safetensors headers alone: names, shapes and completeness."""
        if not self.files:
            other = [p.name for p in self.folder.glob("*.bin")] + [p.name for p in self.folder.glob("*.pt")]
            hint = f" (only {other[0]}: convert it to safetensors)" if other else ""
            raise ConfigError(
                f"{KEY}: {self.folder} has no *.safetensors weights{hint}; to pretrain from its "
                "config.json alone, set training.init=random"
            )
        expected = {t.name: t for t in self.tensors()}
        tied = self.kwargs.get("tie_embeddings", False)
        plan, seen = [], set()
        for path in self.files:
            header = SafetensorsFile(path)
            for key in header.keys():
                name = key if key in expected else self.family.prefix + key
                if name not in expected:
                    if self.family.is_buffer(key) or (tied and key == "lm_head.weight"):
                        continue  # a buffer, or a copy of the tied embedding
                    raise ConfigError(f"{path}: unexpected weight '{key}' (not part of a {self.model_type} model as config.json describes it)")
                tensor = expected[name]
                if header.shape(key) != tensor.shape:
                    raise ConfigError(
                        f"{path}: weight '{key}' has shape {header.shape(key)} but config.json implies {tensor.shape}"
                    )
                header.dtype(key)  # a dtype theseus cannot read fails here, before any weight is loaded
                if name in seen:
                    raise ConfigError(f"{self.folder}: weight '{key}' is stored twice")
                seen.add(name)
                plan.append((path, key, tensor))
        missing = [name for name in expected if name not in seen]
        if missing:
            raise ConfigError(
                f"{self.folder}: {len(missing)} weights are missing from the safetensors files, e.g. '{missing[0]}'"
            )
        return plan

    def dtype(self) -> Optional[str]:
        """The floating dtype the weights are stored in (None without weights)."""
        for path in self.files:
            header = SafetensorsFile(path)
            for key in header.keys():
                if np.issubdtype(header.dtype(key), np.floating) or header.dtype(key).name == "bfloat16":
                    return header.dtype(key).name
        return None

    def load(self, plan: list[tuple[Path, str, HFTensor]], variables: dict[str, keras.Variable]) -> None:
        """Stream the tensors of `plan` into `variables` (by theseus path below the model),
        one at a time, file by file."""
        for path in self.files:
            with SafetensorsFile(path) as reader:
                for file, key, tensor in plan:
                    if file != path:
                        continue
                    for part, value in zip(tensor.parts, tensor.to_theseus(reader.read(key))):
                        _fill(variables[part], value)

    def tokenizer_files(self) -> list[Path]:
        return [self.folder / n for n in TOKENIZER_FILES if (self.folder / n).is_file()]


def _fill(variable: keras.Variable, value: np.ndarray) -> None:
    """Set `variable` to `value`, giving it its first value if it was built without one.

    Keras has no public call for the latter: `_initialize` is where its own deferred
    initialisation ends, on every backend (placing the value by the distribution's layout
    on JAX).
    """
    value = value.astype(variable.dtype, copy=False)
    if variable._value is None:
        variable._initialize(variable._convert_to_tensor(value, dtype=variable.dtype))
    else:
        variable.assign(value)


def _all_axes() -> list[tuple[re.Pattern, LogicalAxes]]:
    table: dict[str, LogicalAxes] = {}
    for family in FAMILIES.values():
        table.update(family.axes)
    return [(re.compile(pattern), axes) for pattern, axes in table.items()]


_AXES = _all_axes()


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

    `axes(name)` gives the logical axes of each checkpoint tensor, as Hugging Face stores
    it; they become the logical axes of the theseus weights it fills (transposed with
    it), and `sharding` maps them to mesh axes. A subclass may override either; where
    `axes` returns None the weight has no logical axes: it is replicated on every device,
    and `layout_map(..., strict=True)` reports it.

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

    def __init__(self, pretrained: Optional[bool] = None, name: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(name=name or _snake_case(type(self).__name__), **kwargs)
        self.checkpoint = HFCheckpoint(self.id)
        self.family = self.checkpoint.family
        self.pretrained = _PRETRAINED.get() if pretrained is None else pretrained
        self.architecture = self.family.model(**self.checkpoint.kwargs)
        self.build()

    @classmethod
    def axes(cls, x: str) -> Optional[LogicalAxes]:
        """Logical axes of the checkpoint tensor named `x` (one per dimension as stored),
        or None when no pattern of any supported family matches it."""
        for pattern, axes in _AXES:
            if pattern.fullmatch(x):
                return axes
        return None

    @property
    def sharding(self) -> list[tuple[str, Optional[Any]]]:
        """Megatron-style tensor parallelism, as the native families: heads and MLP hidden
        split over `shard`, embeddings and the residual width replicated."""
        return [
            (Axes.VOCAB.value, None),
            (Axes.BLOCK_SIZE.value, None),
            (Axes.N_EMBD.value, None),
            (Axes.N_EMBD_FF.value, Axis.SHARD),
            (Axes.N_EMBD_OUT.value, Axis.SHARD),
            (Axes.N_ATTN.value, Axis.SHARD),
            (Axes.N_KV.value, Axis.SHARD),
        ]

    def build(self, input_shape: Any = None) -> None:
        if self.architecture.built:
            return
        load = self.pretrained and not in_stateless_scope()  # an abstract build allocates nothing
        if load:
            plan = self.checkpoint.plan()  # every tensor there with its shape, before anything is built
            with abstract_build():  # no random values to throw away: memory for the weights once
                self.architecture.build((None, None))
        else:
            self.architecture.build((None, None))
        variables = relative_paths(self.architecture)
        filled: set[str] = set()
        for tensor in self.checkpoint.tensors():
            axes = tensor.part_axes(self.axes(tensor.name))
            for part in tensor.parts:
                variable = variables[part]
                if tuple(variable.shape) != tensor.part_shape():
                    raise ConfigError(f"'{tensor.name}' fills {variable.path} {tuple(variable.shape)} with {tensor.part_shape()}")
                variable.logical_axes = axes
                filled.add(part)
        unfilled = sorted(set(variables) - filled)
        if unfilled:
            raise ConfigError(f"{self.family.model_type}: no checkpoint tensor fills {unfilled[:3]}")
        if load:
            self.checkpoint.load(plan, variables)
        self.built = True

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
    def block_size(self) -> int:
        """The longest context the architecture takes (config.json's max positions)."""
        return self.architecture.block_size

    def init_cache(self, batch_size: int, max_length: int):
        """The architecture's key/value cache, for `theseus.generation`."""
        return self.architecture.init_cache(batch_size, max_length)

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask):
        """The architecture's cached forward pass, for `theseus.generation`."""
        return self.architecture.call_with_cache(token_ids, cache, cache_index, padding_mask)

    def save_pretrained(self, folder: Union[str, os.PathLike], **kwargs: Any) -> Path:
        """`save_hf(self, folder, **kwargs)`."""
        return save_hf(self, folder, **kwargs)


# ----------------------------------------------------------------------------- export


def save_hf(
    model: keras.Model,
    folder: Union[str, os.PathLike],
    *,
    tokenizer: Any = None,
    dtype: Optional[str] = None,
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
    architecture = model.architecture if isinstance(model, HFCompat) else model
    family = source.family if source is not None else family_of(architecture)
    if not architecture.built:
        architecture.build((None, None))
    kwargs = model_kwargs(architecture)
    variables = relative_paths(architecture)
    if dtype is None:
        dtype = (source.dtype() if source is not None and model.pretrained else None) or variables["wte/embeddings"].dtype
    config = {k: v for k, v in (source.config if source is not None else {}).items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    config.update(family.to_hf(kwargs), model_type=family.model_type, architectures=[family.architecture], dtype=str(dtype))

    temporary = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        _write_weights(temporary, family.tensors(kwargs), variables, np.dtype(_numpy_dtype(dtype)), max_shard_size)
        (temporary / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _write_tokenizer(temporary, tokenizer, source)
        if source is not None and (source.folder / "generation_config.json").is_file():
            shutil.copy2(source.folder / "generation_config.json", temporary)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def _numpy_dtype(name: str) -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16 if str(name) == "bfloat16" else np.dtype(str(name))


def _write_weights(folder: Path, tensors: list[HFTensor], variables, dtype: np.dtype, max_shard_size: int) -> None:
    """One shard at a time: only one shard's tensors are ever on the host together."""
    from safetensors.numpy import save_file

    shards: list[list[HFTensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = math.prod(tensor.shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for name, shard in zip(names, shards):
        arrays = {}
        for tensor in shard:
            parts = [keras.ops.convert_to_numpy(variables[p].value) for p in tensor.parts]
            arrays[tensor.name] = tensor.to_hf(parts).astype(dtype)
            weight_map[tensor.name] = name
        save_file(arrays, str(folder / name), metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(math.prod(t.shape) for t in tensors) * dtype.itemsize
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _write_tokenizer(folder: Path, tokenizer: Any, source: Optional[HFCheckpoint]) -> None:
    if tokenizer is None or tokenizer is False:
        files = source.tokenizer_files() if source is not None and tokenizer is None else []
    elif hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "save_pretrained"):
        tokenizer.tokenizer.save_pretrained(str(folder))
        return
    else:
        files = [Path(tokenizer) / n for n in TOKENIZER_FILES if (Path(tokenizer) / n).is_file()]
    for path in files:
        shutil.copy2(path, folder / path.name)


__all__ = ["HFCompat", "HFCheckpoint", "LogicalAxes", "random_init", "resolve_folder", "save_hf"]
