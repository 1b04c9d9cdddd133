"""Token shards on disk: flat arrays of token ids, one folder per tokenized source.

    FOLDER/metadata.json             written last: its presence means the folder is complete
    FOLDER/train/00000.bin ...       raw little-endian uint16 (or uint32) token ids
    FOLDER/validation/00000.bin ...
    FOLDER/progress.json             while a tokenize job runs: what is already final
    FOLDER/verified.json             a cache: the shards whose checksum matched, by size and mtime

Documents are separated by the tokenizer's end-of-document id. A shard becomes visible
under its final name only when it is whole (written as `.NNNNN.bin.tmp`, then renamed),
and `metadata.json` (tokenizer, dtype, counts, source, every shard's size in bytes and
SHA-256) comes last, so a killed job never leaves a folder that reads as complete. Shards
from different tokenizers never mix: the metadata's tokenizer fingerprint is checked by
every reader. A shard truncated or altered after the job wrote it is refused when it is
opened (see `TokenShards.verify`).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from theseus.config import ConfigError, write_atomic
from theseus.data.storage import RemoteFolder, is_url

FORMAT = "theseus-token-shards"
VERSION = 1
METADATA = "metadata.json"
PROGRESS = "progress.json"
VERIFIED = "verified.json"
SPLITS = ("train", "validation")
ANNOUNCE_BYTES = 1 << 30  # hashing more than this at open says so first (it takes seconds)


def is_shard_folder(path: str | os.PathLike) -> bool:
    """Whether `path` (a folder or an fsspec URL) is (or is becoming) a token-shard folder made by `data/tokenize`."""
    if is_url(path):
        remote = RemoteFolder(str(path))
        return remote.is_file(METADATA) or remote.is_file(PROGRESS)
    path = Path(path).expanduser()
    return (path / METADATA).is_file() or (path / PROGRESS).is_file()


class ShardWriter:
    """Appends token arrays to numbered shard files of one split, each renamed into place
    when `close()` makes it final; the bytes are hashed (SHA-256) as they are written."""

    def __init__(self, folder: Path, split: str, dtype: Any, first: int = 0):
        self.folder = Path(folder) / split
        self.split, self.dtype = split, np.dtype(dtype)
        self.number = first
        self.tokens = 0  # in the open shard
        self._file = None
        self._digest = hashlib.sha256()

    def _paths(self) -> tuple[Path, Path]:
        final = self.folder / f"{self.number:05d}.bin"
        return self.folder / f".{final.name}.tmp", final

    def append(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self._paths()[0], "wb")
        data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<")).tobytes()
        self._file.write(data)
        self._digest.update(data)
        self.tokens += len(ids)

    def close(self) -> dict[str, Any] | None:
        """Make the open shard final; its entry for the metadata (None if it was empty):
        `file`, `tokens`, `bytes` and `sha256`."""
        if self._file is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        tmp, final = self._paths()
        os.replace(tmp, final)
        entry = {
            "file": f"{self.split}/{final.name}",
            "tokens": self.tokens,
            "bytes": self.tokens * self.dtype.itemsize,
            "sha256": self._digest.hexdigest(),
        }
        self.number += 1
        self.tokens = 0
        self._digest = hashlib.sha256()
        return entry


def fingerprint(metadata: dict[str, Any]) -> str:
    """A digest of what identifies the data: tokenizer, source and every shard's size.

    Shards count by file and tokens only, so a folder made again with checksums (by a
    newer theseus) keeps the fingerprint its checkpoints recorded."""
    key = {k: metadata[k] for k in ("tokenizer", "source", "splits", "dtype")}
    key["splits"] = {
        name: {**split, "shards": [{"file": s["file"], "tokens": s["tokens"]} for s in split["shards"]]}
        for name, split in key["splits"].items()
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    metadata = {"format": FORMAT, "version": VERSION, **metadata}
    metadata["fingerprint"] = fingerprint(metadata)
    write_atomic(Path(folder) / METADATA, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


def verified_record(path: Path, shard: dict[str, Any], stat: os.stat_result | None = None) -> dict[str, Any]:
    """What `verified.json` keeps for a shard whose bytes matched `shard["sha256"]`."""
    stat = stat or path.stat()
    return {"sha256": shard["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_verified(folder: Path) -> dict[str, Any]:
    try:
        cache = json.loads((Path(folder) / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_verified(folder: Path, cache: dict[str, Any]) -> None:
    """Save the cache; a folder we may not write to (a shared, read-only copy) only means
    that the next start checks again."""
    try:
        write_atomic(Path(folder) / VERIFIED, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # releases the GIL: threads hash in parallel


class TokenShards:
    """A complete token-shard folder, memory-mapped.

    Args:
        folder: made by the `data/tokenize` job.

    `split(name)` gives that split's shards as a list of read-only `np.memmap`s (one
    stream, for `TokenWindows` / `ValidationWindows`), each checked first (`verify`);
    `tokenizer` is the metadata's record of the tokenizer (`name`, `fingerprint`,
    `vocab_size`, `eos_id`). A missing, incomplete or damaged folder is a ConfigError.

    Folders made before shards had checksums (no `sha256` in their shard entries) still
    load, with their sizes checked only, and say so once: refusing them would cost a
    re-tokenization for a check they never had, and their size check still catches a
    truncated shard. Make them again with `data/tokenize` to add the checksums.
    """

    def __init__(self, folder: str | os.PathLike):
        self.remote = RemoteFolder(str(folder)) if is_url(folder) else None
        self.folder = Path(folder).expanduser() if self.remote is None else self.remote.url
        path = f"{self.folder}/{METADATA}"
        if not self._is_file(METADATA):
            if self._is_file(PROGRESS):
                raise ConfigError(
                    f"token shards in {self.folder} are incomplete (no {METADATA}): "
                    "run the data/tokenize job again to finish them"
                )
            raise ConfigError(f"no token shards in {self.folder} (no {METADATA}): make them with the data/tokenize job")
        self.metadata = json.loads(self._read_text(METADATA))
        if self.metadata.get("format") != FORMAT or self.metadata.get("version") != VERSION:
            raise ConfigError(f"{path} is not theseus token-shard metadata (format {FORMAT} version {VERSION})")
        self.tokenizer: dict[str, Any] = self.metadata["tokenizer"]
        self.dtype = np.dtype(self.metadata["dtype"]).newbyteorder("<")
        self.fingerprint: str = self.metadata["fingerprint"]
        shards = [s for split in self.metadata["splits"].values() for s in split["shards"]]
        if any("sha256" not in s for s in shards):
            print(
                f"note: token shards in {self.folder} have no checksums (made by an older theseus): "
                "only their sizes are checked; make them again with data/tokenize to add them",
                flush=True,
            )

    def _is_file(self, name: str) -> bool:
        return self.remote.is_file(name) if self.remote else (self.folder / name).is_file()

    def _read_text(self, name: str) -> str:
        return self.remote.read_text(name) if self.remote else (self.folder / name).read_text()

    def tokens(self, split: str) -> int:
        return int(self.metadata["splits"][split]["tokens"])

    def split(self, name: str) -> list[np.ndarray]:
        """The shards of split `name` (`train` or `validation`), checked, memory-mapped."""
        shards = self.metadata["splits"][name]["shards"]
        if self.remote is not None:  # read through the local cache, checked as each is fetched
            paths = [self._fetch(shard) for shard in shards]
        else:
            self.verify([name])
            paths = [self.folder / shard["file"] for shard in shards]
        return [np.memmap(p, dtype=self.dtype, mode="r", shape=(s["tokens"],)) for p, s in zip(paths, shards)]

    def _fetch(self, shard: dict[str, Any]) -> Path:
        """A remote shard's local copy (`storage.cache_dir()`), its size checked first."""
        size = self.remote.size(shard["file"])
        if size != shard.get("bytes", shard["tokens"] * self.dtype.itemsize):
            raise ConfigError(
                f"token shard {self.remote.url_of(shard['file'])} is missing or damaged ({size} bytes, metadata "
                f"says {shard['tokens']} tokens of {self.dtype.itemsize} bytes): it changed after data/tokenize "
                "wrote it; restore it or make the shards again with data/tokenize"
            )
        return self.remote.fetch(shard["file"], shard.get("sha256"), size)

    def _stat(self, shard: dict[str, Any]) -> tuple[Path, os.stat_result]:
        """The shard's path and stat, refused unless it has the size the metadata records."""
        path = self.folder / shard["file"]
        stat = path.stat() if path.is_file() else None
        size = stat.st_size if stat else -1
        if size != shard.get("bytes", shard["tokens"] * self.dtype.itemsize):
            raise ConfigError(
                f"token shard {path} is missing or damaged ({size} bytes, metadata says "
                f"{shard['tokens']} tokens of {self.dtype.itemsize} bytes): it changed after data/tokenize "
                "wrote it; restore it or make the shards again with data/tokenize"
            )
        return path, stat

    def verify(self, splits: tuple[str, ...] | list[str] = SPLITS, recheck: bool = False) -> None:
        """Check the shards of `splits`: every size (always), and every SHA-256 that was not
        already found right for the file as it is now.

        When: as a job opens its data (`split`, for every shard of the split), not lazily
        per shard on its first read. Windows are read from the memory maps in the loader's
        prefetch thread, hours into a run; a damaged shard found there would kill the run
        mid-way, where at open it is one line before the first step. The cost is paid once per shard file: a shard whose bytes
        matched is recorded in `verified.json` with its size and modification time (the
        quick check of rsync and make) and not hashed again while both are unchanged; the
        `data/tokenize` job records the shards it writes, so a fresh folder is not hashed at
        all. A copy that does not keep modification times is hashed once more; a change that
        keeps both (bit rot below the file system) is found by `verify(recheck=True)`.

        Shards in an fsspec folder are checked as they are copied into the local cache (their
        SHA-256 computed while downloading); a copy already cached is used as it is.
        """
        if self.remote is not None:
            for shard in (s for name in splits for s in self.metadata["splits"][name]["shards"]):
                self._fetch(shard)
            return
        cache = read_verified(self.folder)
        todo = []
        for shard in (s for name in splits for s in self.metadata["splits"][name]["shards"]):
            path, stat = self._stat(shard)
            record = verified_record(path, shard, stat) if "sha256" in shard else None
            if record is not None and (recheck or cache.get(shard["file"]) != record):
                todo.append((shard, path, record))
        if not todo:
            return
        total = sum(record["size"] for _, _, record in todo)
        if total > ANNOUNCE_BYTES:
            print(
                f"checking the SHA-256 of {len(todo)} token shards ({total / 1e9:.1f} GB) in {self.folder}", flush=True
            )
        with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1, 8)) as pool:
            digests = list(pool.map(_sha256, [path for _, path, _ in todo]))
        for (shard, path, record), digest in zip(todo, digests):
            if digest != shard["sha256"]:
                raise ConfigError(
                    f"token shard {path} is damaged: its SHA-256 is {digest[:16]}..., {METADATA} says "
                    f"{shard['sha256'][:16]}... (it changed after data/tokenize wrote it); restore it or "
                    "make the shards again with data/tokenize"
                )
            cache[shard["file"]] = record
        write_verified(self.folder, cache)

    def check_tokenizer(self, tokenizer: Any, what: str = "data/tokenizer") -> None:
        """Refuse to read these shards with ids from another tokenizer."""
        if tokenizer.fingerprint != self.tokenizer["fingerprint"]:
            raise ConfigError(
                f"{what}: token shards in {self.folder} were made with tokenizer "
                f"{self.tokenizer['name']!r} (fingerprint {self.tokenizer['fingerprint']}), "
                f"not {tokenizer.name!r} (fingerprint {tokenizer.fingerprint}); set {what} to theirs"
            )
