"""Tokenize a document source into token shards, on every core or a Ray cluster, resumably.

The documents are cut, in order, into chunks of about a megabyte of text; an engine
(`engines.py`: a local process pool, or Ray actors) encodes the chunks (documents each
followed by the end-of-document id) and this process appends the results, in order, to
the train and validation shards. Document `i` is held out for validation iff
`floor((i + 1) f) > floor(i f)` for `validation_fraction` f: an exact share, spread
through the source, decided without knowing its length.

Whenever a train shard is full both open shards are made final and `progress.json`
records how many documents are done; a job started again in the same folder deletes
anything written after that, skips those documents and carries on, so its shards are
byte for byte those of a run that was never interrupted.

The folder may be an fsspec URL (`memory://`, `gs://`, ...): the shards are then written in
a local staging folder and each is uploaded as one object once final, `progress.json`
after them and `metadata.json` last, so the remote folder reads as complete only at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from theseus.config import ConfigError, write_atomic
from theseus.data.engines import CHUNK_CHARS, check_engine, encoded_chunks, is_validation
from theseus.data.shards import (
    METADATA,
    PROGRESS,
    SPLITS,
    ShardWriter,
    TokenShards,
    verified_record,
    write_metadata,
    write_verified,
)
from theseus.data.sources import Source
from theseus.data.storage import RemoteFolder, cache_dir, is_url
from theseus.data.tokenizers import ByteTokenizer

__all__ = ["CHUNK_CHARS", "is_validation", "tokenize_to_shards"]


def _progress_bar(enabled: bool, initial: int, engine: str):
    """Tokens (with tokens/s) as the bar; documents done (of how many, when known) beside it."""
    from tqdm.auto import tqdm

    return tqdm(
        desc=f"tokenize ({engine})",
        unit="tok",
        unit_scale=True,
        initial=initial,
        disable=not enabled,
        mininterval=1.0,
    )


@dataclasses.dataclass
class _State:
    """What is final on disk: written to `progress.json` at every commit."""

    tokenizer: dict[str, Any]
    source: dict[str, Any]
    validation_fraction: float
    documents: int = 0
    splits: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {s: {"documents": 0, "tokens": 0, "shards": []} for s in SPLITS}
    )

    @classmethod
    def of(cls, source: Source, tokenizer: Any, validation_fraction: float) -> _State:
        """The state of a job that has written nothing yet."""
        return cls(
            tokenizer={
                "name": tokenizer.name,
                "fingerprint": tokenizer.fingerprint,
                "vocab_size": int(tokenizer.vocab_size),
                "eos_id": int(tokenizer.eos_id),
            },
            source=dataclasses.asdict(source),
            validation_fraction=float(validation_fraction),
        )

    def same_job(self, other: dict[str, Any], folder: Path) -> None:
        if other["tokenizer"]["fingerprint"] != self.tokenizer["fingerprint"]:
            raise ConfigError(
                f"data/tokenizer: {folder} holds shards from tokenizer {other['tokenizer']['name']!r} "
                f"(fingerprint {other['tokenizer']['fingerprint']}), not {self.tokenizer['name']!r} "
                f"(fingerprint {self.tokenizer['fingerprint']}); shards of two tokenizers never mix: "
                "use another folder"
            )
        if other["source"] != self.source or other["validation_fraction"] != self.validation_fraction:
            raise ConfigError(
                f"data/source: {folder} holds shards of {other['source']} (validation_fraction "
                f"{other['validation_fraction']}), not of {self.source}: use another folder"
            )

    def resume(self, folder: Path, name: str | Path) -> None:
        """Carry on from a killed job's `progress.json`, if there is one, deleting what it wrote after."""
        if (folder / PROGRESS).is_file():
            saved = json.loads((folder / PROGRESS).read_text())
            self.same_job(saved, name)
            self.documents, self.splits = saved["documents"], saved["splits"]
            print(f"resuming the tokenization in {name} after {self.documents:,} documents", flush=True)
        _remove_unfinished(folder, self)


def tokenize_to_shards(
    source: Source,
    tokenizer: Any,
    folder: str | os.PathLike,
    *,
    validation_fraction: float = 0.05,
    shard_tokens: int = 100_000_000,
    workers: int = 0,
    progress: bool = True,
    engine: str = "local",
) -> dict[str, Any]:
    """Write `source` tokenized by `tokenizer` as token shards in `folder`; a summary dict.

    Args:
        source: where the documents come from.
        tokenizer: a `ByteTokenizer` or `HFTokenizer`.
        folder: the shard folder, a path or an fsspec URL (created; a partial one from a killed
            job is resumed).
        validation_fraction: the share of documents held out for validation.
        shard_tokens: a train shard is closed once it holds this many tokens.
        workers: encoding processes (Ray actors with `engine="ray"`); 1 = encode in this
            process (local); 0 = one per core (the byte tokenizer, locally: this process).
        progress: show a progress bar with documents, tokens and tokens per second.
        engine: `local` (a process pool on this host) or `ray` (Ray actors; see `engines.py`).
    """
    check_engine(engine)
    remote = RemoteFolder(str(folder), what="tokenize/output") if is_url(folder) else None
    state = _State.of(source, tokenizer, validation_fraction)
    if remote.is_file(METADATA) if remote is not None else (Path(folder) / METADATA).is_file():
        done = TokenShards(folder).metadata
        state.same_job(done, folder)
        print(f"token shards in {folder} are already complete", flush=True)
        return _summary(folder, done, 0.0, 0)
    local = _staging(remote) if remote is not None else Path(folder)
    if remote is not None and remote.is_file(PROGRESS):
        (local / PROGRESS).write_text(remote.read_text(PROGRESS))
    state.resume(local, folder)
    shards = _OpenShards(local, state, np.dtype(tokenizer.dtype), remote)
    if not workers and engine == "local":  # bytes cost less to encode than to hand to another process
        workers = 1 if isinstance(tokenizer, ByteTokenizer) else os.cpu_count() or 1
    began = time.perf_counter()
    written = _encode_into(shards, source, tokenizer, workers, shard_tokens, progress, engine)
    seconds = time.perf_counter() - began
    shards.finish()
    return _summary(folder, TokenShards(folder).metadata, written / max(seconds, 1e-9), written)


def _staging(remote: RemoteFolder) -> Path:
    """A fresh local folder where a job writing to `remote` makes its shards before uploading them."""
    staging = cache_dir() / "staging" / hashlib.sha256(remote.url.encode()).hexdigest()[:16]
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


class _OpenShards:
    """The open train and validation shards of a job; `commit()` makes both final together
    and records them, with the documents done, in `progress.json`. The shards this process
    wrote (hashed as written) go into `verified.json`, so that training does not hash them
    again; those of a killed run before it are hashed at their first use."""

    def __init__(self, folder: Path, state: _State, dtype: np.dtype, remote: RemoteFolder | None = None):
        self.folder, self.state, self.dtype, self.remote = folder, state, dtype, remote
        self.verified: dict[str, Any] = {}
        self.writers = {s: ShardWriter(folder, s, dtype, first=len(state.splits[s]["shards"])) for s in SPLITS}
        folder.mkdir(parents=True, exist_ok=True)
        if remote is not None:  # what a killed job uploaded after its last commit
            _remove_unfinished_remote(remote, state)
        self.commit()  # a folder with progress.json is a shard folder, even before its first shard

    def append(self, train: np.ndarray, validation: np.ndarray, n_train: int, n_validation: int) -> None:
        self.writers["train"].append(train)
        self.writers["validation"].append(validation)
        self.state.documents += n_train + n_validation
        self.state.splits["train"]["documents"] += n_train
        self.state.splits["validation"]["documents"] += n_validation
        self.state.splits["train"]["tokens"] += len(train)
        self.state.splits["validation"]["tokens"] += len(validation)

    def commit(self) -> None:
        for split, writer in self.writers.items():
            entry = writer.close()
            if entry is None:
                continue
            self.state.splits[split]["shards"].append(entry)
            if self.remote is None:
                self.verified[entry["file"]] = verified_record(self.folder / entry["file"], entry)
            else:  # uploaded whole, then no longer needed here
                self.remote.put(self.folder / entry["file"], entry["file"])
                (self.folder / entry["file"]).unlink()
        text = json.dumps(dataclasses.asdict(self.state), indent=1) + "\n"
        write_atomic(self.folder / PROGRESS, text)
        if self.remote is not None:
            self.remote.write_text(PROGRESS, text)

    def finish(self) -> None:
        """Write the metadata, last: from then on the folder reads as complete."""
        state = self.state
        metadata = {
            "tokenizer": state.tokenizer,
            "source": state.source,
            "validation_fraction": state.validation_fraction,
            "documents": state.documents,
            "dtype": self.dtype.name,
            "splits": state.splits,
        }
        write_verified(self.folder, self.verified)
        write_metadata(self.folder, metadata)
        (self.folder / PROGRESS).unlink()
        if self.remote is not None:
            self.remote.write_text(METADATA, (self.folder / METADATA).read_text())
            self.remote.remove(PROGRESS)
            shutil.rmtree(self.folder, ignore_errors=True)


def _encode_into(
    shards: _OpenShards, source: Source, tokenizer: Any, workers: int, shard_tokens: int, progress: bool, engine: str
) -> int:
    """Encode the documents not yet done into `shards`, committing whenever a train shard is
    full and once at the end; the number of tokens written."""
    state = shards.state
    already = sum(state.splits[s]["tokens"] for s in SPLITS)
    chars = min(CHUNK_CHARS, shard_tokens)  # a shard closes between chunks: keep it near shard_tokens
    fraction = state.validation_fraction
    written = 0
    with (
        _progress_bar(progress, already, engine) as bar,
        encoded_chunks(engine, source, tokenizer, workers, fraction, state.documents, chars) as (total, results),
    ):
        of = f" of {total:,}" if total is not None else ""
        for train, validation, n_train, n_validation in results:
            shards.append(train, validation, n_train, n_validation)
            written += len(train) + len(validation)
            bar.update(len(train) + len(validation))
            bar.set_postfix(documents=f"{state.documents:,}{of}", refresh=False)
            if shards.writers["train"].tokens >= shard_tokens:
                shards.commit()
    shards.commit()
    return written


def _remove_unfinished(folder: Path, state: _State) -> None:
    """Delete shard files that `progress.json` does not list (written after its last commit)."""
    final = {shard["file"] for split in state.splits.values() for shard in split["shards"]}
    for split in SPLITS:
        for path in sorted((folder / split).glob("*")) if (folder / split).is_dir() else []:
            if f"{split}/{path.name}" not in final:
                path.unlink()


def _remove_unfinished_remote(remote: RemoteFolder, state: _State) -> None:
    """Delete the remote shards that `progress.json` does not list (uploaded after its last commit)."""
    final = {shard["file"] for split in state.splits.values() for shard in split["shards"]}
    for split in SPLITS:
        for name in remote.files(split):
            if name not in final:
                remote.remove(name)


def _summary(folder: Any, metadata: dict[str, Any], tokens_per_sec: float, encoded: int) -> dict[str, Any]:
    splits = metadata["splits"]
    return {
        "folder": str(folder),
        "documents": metadata["documents"],
        "train_tokens": splits["train"]["tokens"],
        "validation_tokens": splits["validation"]["tokens"],
        "shards": sum(len(splits[s]["shards"]) for s in SPLITS),
        "tokens_per_sec": tokens_per_sec,
        "tokens_encoded": encoded,  # by this call (a resumed job: only what was not already final)
        "fingerprint": metadata["fingerprint"],
    }
