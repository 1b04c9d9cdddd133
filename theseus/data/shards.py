"""Token shards on disk: flat arrays of token ids, one folder per tokenized source.

    FOLDER/metadata.json             written last: its presence means the folder is complete
    FOLDER/train/00000.bin ...       raw little-endian uint16 (or uint32) token ids
    FOLDER/validation/00000.bin ...
    FOLDER/progress.json             while a tokenize job runs: what is already final

Documents are separated by the tokenizer's end-of-document id. A shard becomes visible
under its final name only when it is whole (written as `.NNNNN.bin.tmp`, then renamed),
and `metadata.json` (tokenizer, dtype, counts, source) comes last, so a killed job never
leaves a folder that reads as complete. Shards from different tokenizers never mix:
the metadata's tokenizer fingerprint is checked by every reader.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from theseus.config import ConfigError, write_atomic

FORMAT = "theseus-token-shards"
VERSION = 1
METADATA = "metadata.json"
PROGRESS = "progress.json"
SPLITS = ("train", "validation")


def is_shard_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is (or is becoming) a token-shard folder made by `data/tokenize`."""
    path = Path(path).expanduser()
    return (path / METADATA).is_file() or (path / PROGRESS).is_file()


class ShardWriter:
    """Appends token arrays to numbered shard files of one split, each renamed into place
    when `close()` makes it final."""

    def __init__(self, folder: Path, split: str, dtype: Any, first: int = 0):
        self.folder = Path(folder) / split
        self.split, self.dtype = split, np.dtype(dtype)
        self.number = first
        self.tokens = 0  # in the open shard
        self._file = None

    def _paths(self) -> tuple[Path, Path]:
        final = self.folder / f"{self.number:05d}.bin"
        return self.folder / f".{final.name}.tmp", final

    def append(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self._paths()[0], "wb")
        self._file.write(np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<")).tobytes())
        self.tokens += len(ids)

    def close(self) -> dict[str, Any] | None:
        """Make the open shard final; its entry for the metadata (None if it was empty)."""
        if self._file is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        tmp, final = self._paths()
        os.replace(tmp, final)
        entry = {"file": f"{self.split}/{final.name}", "tokens": self.tokens}
        self.number += 1
        self.tokens = 0
        return entry


def fingerprint(metadata: dict[str, Any]) -> str:
    """A digest of what identifies the data: tokenizer, source and every shard's size."""
    key = {k: metadata[k] for k in ("tokenizer", "source", "splits", "dtype")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    metadata = {"format": FORMAT, "version": VERSION, **metadata}
    metadata["fingerprint"] = fingerprint(metadata)
    write_atomic(Path(folder) / METADATA, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


class TokenShards:
    """A complete token-shard folder, memory-mapped.

    Args:
        folder: made by the `data/tokenize` job.

    `split(name)` gives that split's shards as a list of read-only `np.memmap`s (one
    stream, for `TokenWindows` / `ValidationWindows`); `tokenizer` is the metadata's
    record of the tokenizer (`name`, `fingerprint`, `vocab_size`, `eos_id`). A missing,
    incomplete or damaged folder is a ConfigError.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        path = self.folder / METADATA
        if not path.is_file():
            if (self.folder / PROGRESS).is_file():
                raise ConfigError(
                    f"token shards in {self.folder} are incomplete (no {METADATA}): "
                    "run the data/tokenize job again to finish them"
                )
            raise ConfigError(f"no token shards in {self.folder} (no {METADATA}): make them with the data/tokenize job")
        self.metadata = json.loads(path.read_text())
        if self.metadata.get("format") != FORMAT or self.metadata.get("version") != VERSION:
            raise ConfigError(f"{path} is not theseus token-shard metadata (format {FORMAT} version {VERSION})")
        self.tokenizer: dict[str, Any] = self.metadata["tokenizer"]
        self.dtype = np.dtype(self.metadata["dtype"]).newbyteorder("<")
        self.fingerprint: str = self.metadata["fingerprint"]

    def tokens(self, split: str) -> int:
        return int(self.metadata["splits"][split]["tokens"])

    def split(self, name: str) -> list[np.ndarray]:
        """The shards of split `name` (`train` or `validation`), memory-mapped."""
        arrays = []
        for shard in self.metadata["splits"][name]["shards"]:
            path = self.folder / shard["file"]
            size = path.stat().st_size if path.is_file() else -1
            if size != shard["tokens"] * self.dtype.itemsize:
                raise ConfigError(
                    f"token shard {path} is missing or damaged ({size} bytes, metadata says "
                    f"{shard['tokens']} tokens of {self.dtype.itemsize} bytes)"
                )
            arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
        return arrays

    def check_tokenizer(self, tokenizer: Any, what: str = "data/tokenizer") -> None:
        """Refuse to read these shards with ids from another tokenizer."""
        if tokenizer.fingerprint != self.tokenizer["fingerprint"]:
            raise ConfigError(
                f"{what}: token shards in {self.folder} were made with tokenizer "
                f"{self.tokenizer['name']!r} (fingerprint {self.tokenizer['fingerprint']}), "
                f"not {tokenizer.name!r} (fingerprint {tokenizer.fingerprint}); set {what} to theirs"
            )
