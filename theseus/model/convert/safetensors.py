"""Safetensors files, read one tensor at a time and written one shard at a time.

`safetensors`' own NumPy reader refuses bfloat16, the usual dtype of published checkpoints,
and maps the whole file into memory; the format (an 8-byte header length, a JSON header of
names, dtypes, shapes and byte offsets, then raw little-endian data) is simple enough to
read tensor by tensor into exactly one NumPy array each, with `ml_dtypes` for bfloat16.
Files are written with `safetensors.numpy.save_file`, which handles `ml_dtypes` arrays.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

from theseus.config import ConfigError

INDEX_FILE = "model.safetensors.index.json"

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class SafetensorsFile:
    """The header of a `.safetensors` file, and its tensors read on demand.

    Use it as a context manager: the file stays open while tensors are read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as error:
            raise ConfigError(f"{self.path} is not a readable safetensors file ({error})") from None
        self.data_start = 8 + length
        self.metadata = header.pop("__metadata__", {}) or {}
        self.entries: dict[str, dict] = header
        self._file = None

    def __enter__(self) -> SafetensorsFile:
        self._file = open(self.path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._file = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self.entries[name]["dtype"]
        if code not in DTYPES:
            raise ConfigError(f"{self.path}: tensor '{name}' has dtype {code}, which theseus cannot read")
        return DTYPES[code]

    def read(self, name: str) -> np.ndarray:
        """The tensor `name`, read from disk into a new array (no memory map)."""
        entry = self.entries[name]
        array = np.empty(self.shape(name), self.dtype(name))
        begin, end = entry["data_offsets"]
        if end - begin != array.nbytes:
            raise ConfigError(f"{self.path}: tensor '{name}' holds {end - begin} bytes, its shape needs {array.nbytes}")
        self._file.seek(self.data_start + begin)
        if self._file.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
            raise ConfigError(f"{self.path} is truncated: tensor '{name}' is incomplete")
        return array


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype named `name`, bfloat16 included (`ml_dtypes`)."""
    return np.dtype(ml_dtypes.bfloat16) if str(name) == "bfloat16" else np.dtype(str(name))


def write_shards(
    folder: Path,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    array: Callable[[str], np.ndarray],
    dtype: np.dtype,
    max_shard_size: int,
) -> None:
    """Write the tensors `shapes` names, `array(name)` each, as `dtype`, into files of at most
    `max_shard_size` bytes (with an index when more than one, as transformers writes them).
    One shard at a time: only one shard's tensors are ever on the host together."""
    from safetensors.numpy import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file, shard in zip(files, shards):
        save_file(
            {name: array(name).astype(dtype, copy=False) for name in shard},
            str(folder / file),
            metadata={"format": "pt"},
        )
    if len(shards) > 1:
        total = sum(math.prod(shape) for _, shape in shapes) * dtype.itemsize
        weight_map = {name: file for file, shard in zip(files, shards) for name in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
