"""Hugging Face model folders on disk: finding one, checking it, reading its weights.

`HFCheckpoint` opens a folder (or a hub id already in the local cache; nothing is ever
downloaded), checks its config.json and safetensors headers, and streams the tensors into
a built theseus model's variables. A PEFT LoRA adapter folder stands for its base (named in
its adapter_config.json, a local folder or a cached hub id) with the adapter merged in
(`theseus.model.convert.peft`). Only safetensors are read: weights stored as a pickle
(`pytorch_model.bin`, `*.pt`) are refused with the command that converts them, since
unpickling a file can run any code in it; and no tokenizer or model code shipped in a
folder is ever run (`trust_remote_code` is never set). `open_checkpoint`, `tokenizer_name`
and `check_vocabulary` are what a job needs to accept a folder and its tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from theseus.config import ConfigError
from theseus.model.convert import FAMILIES, Family, HFTensor
from theseus.model.convert.peft import ADAPTER_CONFIG, ADAPTER_FILE, Adapter, read_config
from theseus.model.convert.safetensors import INDEX_FILE, SafetensorsFile

KEY = "architecture/huggingface/model"
AUTO = "auto"
"""`data/tokenizer: auto`: the checkpoint folder's own tokenizer."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that are Python pickles (PyTorch's format): never opened."""


def pickle_refusal(folder: Path, name: str) -> ConfigError:
    """The one line refusing a folder whose weights are only the pickle `name`."""
    convert = (
        "from transformers import AutoModelForCausalLM as M; "
        f"M.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r}, safe_serialization=True)"
    )
    return ConfigError(
        f"{KEY}: {folder} holds its weights only as {name}, a pickle, which theseus never loads "
        f'(unpickling can run any code in the file); convert it to safetensors first: python -c "{convert}"'
    )


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
        adapter = self._adapter_config()
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
        self.adapter = None if adapter is None else Adapter(*adapter, self.family, self.kwargs, self.folder)

    def _adapter_config(self) -> tuple[Path, dict] | None:
        """A PEFT LoRA adapter folder (adapter_config.json, no config.json) stands for its base
        with the adapter merged: `self.folder` becomes the base's; the adapter's folder and config."""
        if not (self.folder / ADAPTER_CONFIG).is_file() or (self.folder / "config.json").is_file():
            return None
        folder, config = self.folder, read_config(self.folder, KEY)
        base = config["base_model_name_or_path"]
        try:
            self.folder = resolve_folder(base)
        except ConfigError as error:
            reason = str(error).removeprefix(f"{KEY}: ")
            raise ConfigError(f"{KEY}: the base of the PEFT adapter {folder}: {reason}") from None
        return folder, config

    def sources(self) -> list[Path]:
        """The files the weights are read from: the safetensors, and an adapter's."""
        return self.files + ([self.adapter.folder / ADAPTER_FILE] if self.adapter is not None else [])

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
            pickles = sorted(p.name for p in self.folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
            if pickles:
                raise pickle_refusal(self.folder, pickles[0])
            raise ConfigError(
                f"{KEY}: {self.folder} has no *.safetensors weights; to pretrain from its "
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
                    raise ConfigError(
                        f"{path}: unexpected weight '{key}' (not part of a {self.model_type} model as config.json describes it)"
                    )
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

    def dtype(self) -> str | None:
        """The floating dtype the weights are stored in (None without weights)."""
        for path in self.files:
            header = SafetensorsFile(path)
            for key in header.keys():
                if np.issubdtype(header.dtype(key), np.floating) or header.dtype(key).name == "bfloat16":
                    return header.dtype(key).name
        return None

    def load(self, plan: list[tuple[Path, str, HFTensor]], variables: dict[str, keras.Variable]) -> None:
        """Stream the tensors of `plan` into `variables` (by theseus path below the model),
        one at a time, file by file (a stacked weight once all its entries are read)."""
        stacks: dict[str, tuple[np.ndarray, set[int]]] = {}
        for path in self.files:
            with SafetensorsFile(path) as reader:
                for file, key, tensor in plan:
                    if file != path:
                        continue
                    array = reader.read(key)
                    if self.adapter is not None:  # a PEFT adapter's update, added as stored
                        array = self.adapter.merged(tensor.name, array)
                    for part, value in zip(tensor.parts, tensor.to_theseus(array)):
                        if tensor.index is None:
                            _fill(variables[part], value)
                        else:
                            _fill_entry(stacks, variables[part], tensor.index, value)
        for name, (_, missing) in stacks.items():
            raise ConfigError(f"{self.folder}: no checkpoint tensor fills entry {min(missing)} of {name}")

    def tokenizer_files(self) -> list[Path]:
        return tokenizer_files(self.folder)


def tokenizer_files(folder: Path) -> list[Path]:
    """The Hugging Face tokenizer files in `folder`."""
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def copy_tokenizer(folder: Path, tokenizer: Any, source: HFCheckpoint | None) -> None:
    """Put a tokenizer into the model folder being written: `tokenizer` a folder to copy, an
    object with a Hugging Face `.tokenizer`, False for none, or None for `source`'s own."""
    if tokenizer is None or tokenizer is False:
        files = source.tokenizer_files() if source is not None and tokenizer is None else []
    elif hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "save_pretrained"):
        tokenizer.tokenizer.save_pretrained(str(folder))
        return
    else:
        files = tokenizer_files(Path(tokenizer))
    for path in files:
        shutil.copy2(path, folder / path.name)


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


def _fill_entry(stacks: dict, variable: keras.Variable, index: int, value: np.ndarray) -> None:
    """Put `value` at entry `index` of the stacked `variable`'s host copy in `stacks`; set the
    variable from it once every entry is there (`load` refuses a stack left incomplete)."""
    if variable.path not in stacks:
        stacks[variable.path] = np.empty((variable.shape[0], *value.shape), value.dtype), set(range(variable.shape[0]))
    stack, missing = stacks[variable.path]
    stack[index] = value
    missing.discard(index)
    if not missing:
        _fill(variable, stacks.pop(variable.path)[0])


def open_checkpoint(model_id: str, model_types: tuple[str, ...] = (), job: str = "this job") -> HFCheckpoint:
    """The checkpoint `model_id` names, refused (ConfigError) unless its family is one of `model_types`."""
    checkpoint = HFCheckpoint(model_id)
    if model_types and checkpoint.model_type not in model_types:
        raise ConfigError(
            f"{KEY}: {checkpoint.folder} holds a {checkpoint.model_type} model but {job} takes "
            f"{' or '.join(model_types)}; use the {checkpoint.model_type}/... jobs"
        )
    return checkpoint


def tokenizer_name(name: str, checkpoint: HFCheckpoint) -> str:
    """The tokenizer `data/tokenizer` names, for `theseus.data.load_tokenizer`: `auto` is the
    checkpoint folder's own (a ConfigError when it has none)."""
    if name != AUTO:
        return name
    if not checkpoint.tokenizer_files():
        raise ConfigError(
            f"data/tokenizer is auto but {checkpoint.folder} has no tokenizer files; "
            "set data.tokenizer to byte or to a tokenizer folder"
        )
    return str(checkpoint.folder)


def check_vocabulary(tokenizer: Any, checkpoint: HFCheckpoint) -> None:
    """Refuse a tokenizer with more tokens than the checkpoint has embedding rows."""
    vocab = checkpoint.kwargs["vocab_size"]
    if tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"data/tokenizer has {tokenizer.vocab_size} tokens but the model in {checkpoint.folder} "
            f"has {vocab} embedding rows; use its own tokenizer (data.tokenizer=auto) or a smaller one"
        )
