"""Tokenize a document source into token shards, on every core, resumably.

The main process reads documents in order and cuts them into chunks of about a
megabyte of text; worker processes encode chunks (documents each followed by the
end-of-document id) and the main process appends the results, in order, to the
train and validation shards. Document `i` is held out for validation iff
`floor((i + 1) f) > floor(i f)` for `validation_fraction` f: an exact share, spread
through the source, decided without knowing its length.

Whenever a train shard is full both open shards are made final and `progress.json`
records how many documents are done; a job started again in the same folder deletes
anything written after that, skips those documents and carries on, so its shards are
byte for byte those of a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from theseus.config import ConfigError, write_atomic
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
from theseus.data.tokenizers import ByteTokenizer, join_documents

CHUNK_CHARS = 1 << 20  # text per task handed to a worker: large enough to amortise the hand-over


def is_validation(index: np.ndarray | int, fraction: float) -> np.ndarray:
    """Whether document `index` is held out, for a validation share of `fraction`."""
    index = np.asarray(index, dtype=np.int64)
    return np.floor((index + 1) * fraction) > np.floor(index * fraction)


def _chunks(documents: Iterable[str], first: int, chars: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the first document, documents) with about `chars` characters each."""
    chunk: list[str] = []
    size, start = 0, first
    for document in documents:
        chunk.append(document)
        size += len(document)
        if size >= chars:
            yield start, chunk
            start += len(chunk)
            chunk, size = [], 0
    if chunk:
        yield start, chunk


def encode_chunk(tokenizer: Any, task: tuple[int, list[str], float]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A chunk's train and validation token streams, and how many documents went to each."""
    start, documents, fraction = task
    held_out = is_validation(np.arange(start, start + len(documents)), fraction)
    ids = tokenizer.encode_batch(documents)
    train = join_documents([i for i, v in zip(ids, held_out) if not v], tokenizer.eos_id, tokenizer.dtype)
    validation = join_documents([i for i, v in zip(ids, held_out) if v], tokenizer.eos_id, tokenizer.dtype)
    n_validation = int(np.count_nonzero(held_out))
    return train, validation, len(documents) - n_validation, n_validation


_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the pool is the parallelism
    _worker_tokenizer = tokenizer


def _encode_in_worker(task: tuple[int, list[str], float]) -> tuple[np.ndarray, np.ndarray, int, int]:
    return encode_chunk(_worker_tokenizer, task)


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver: workers fork from a clean server, never from this process, whose threads
    (JAX's, the tokenizer's) may hold locks. As with spawn, a script that starts a pool must
    guard its entry point with `if __name__ == "__main__":`."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # imported once by the server, so that its forked workers start at once
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _progress_bar(enabled: bool, initial: int):
    from tqdm.auto import tqdm

    return tqdm(desc="tokenize", unit="tok", unit_scale=True, initial=initial, disable=not enabled, mininterval=1.0)


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

    def resume(self, folder: Path) -> None:
        """Carry on from a killed job's `progress.json`, if there is one, deleting what it wrote after."""
        if (folder / PROGRESS).is_file():
            saved = json.loads((folder / PROGRESS).read_text())
            self.same_job(saved, folder)
            self.documents, self.splits = saved["documents"], saved["splits"]
            print(f"resuming the tokenization in {folder} after {self.documents:,} documents", flush=True)
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
) -> dict[str, Any]:
    """Write `source` tokenized by `tokenizer` as token shards in `folder`; a summary dict.

    Args:
        source: where the documents come from.
        tokenizer: a `ByteTokenizer` or `HFTokenizer`.
        folder: the shard folder (created; a partial one from a killed job is resumed).
        validation_fraction: the share of documents held out for validation.
        shard_tokens: a train shard is closed once it holds this many tokens.
        workers: encoding processes; 1 = encode in this process; 0 = one per core (the byte
            tokenizer: this process).
        progress: show a progress bar with tokens per second.
    """
    folder = Path(folder)
    state = _State.of(source, tokenizer, validation_fraction)
    if (folder / METADATA).is_file():
        done = TokenShards(folder).metadata
        state.same_job(done, folder)
        print(f"token shards in {folder} are already complete", flush=True)
        return _summary(folder, done, 0.0)
    state.resume(folder)
    shards = _OpenShards(folder, state, np.dtype(tokenizer.dtype))
    if not workers:  # bytes cost less to encode than to hand to another process
        workers = 1 if isinstance(tokenizer, ByteTokenizer) else os.cpu_count() or 1
    began = time.perf_counter()
    written = _encode_into(shards, source, tokenizer, workers, shard_tokens, progress)
    seconds = time.perf_counter() - began
    shards.finish()
    return _summary(folder, TokenShards(folder).metadata, written / max(seconds, 1e-9))


class _OpenShards:
    """The open train and validation shards of a job; `commit()` makes both final together
    and records them, with the documents done, in `progress.json`. The shards this process
    wrote (hashed as written) go into `verified.json`, so that training does not hash them
    again; those of a killed run before it are hashed at their first use."""

    def __init__(self, folder: Path, state: _State, dtype: np.dtype):
        self.folder, self.state, self.dtype = folder, state, dtype
        self.verified: dict[str, Any] = {}
        self.writers = {s: ShardWriter(folder, s, dtype, first=len(state.splits[s]["shards"])) for s in SPLITS}
        folder.mkdir(parents=True, exist_ok=True)
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
            if entry is not None:
                self.state.splits[split]["shards"].append(entry)
                self.verified[entry["file"]] = verified_record(self.folder / entry["file"], entry)
        write_atomic(self.folder / PROGRESS, json.dumps(dataclasses.asdict(self.state), indent=1) + "\n")

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


def _encode_into(
    shards: _OpenShards, source: Source, tokenizer: Any, workers: int, shard_tokens: int, progress: bool
) -> int:
    """Encode the documents not yet done into `shards`, committing whenever a train shard is
    full and once at the end; the number of tokens written."""
    state = shards.state
    already = sum(state.splits[s]["tokens"] for s in SPLITS)
    documents = itertools.islice(source.documents(), state.documents, None)
    chars = min(CHUNK_CHARS, shard_tokens)  # a shard closes between chunks: keep it near shard_tokens
    tasks = ((start, chunk, state.validation_fraction) for start, chunk in _chunks(documents, state.documents, chars))
    written = 0
    with _progress_bar(progress, already) as bar, _Encoder(tokenizer, workers) as encode:
        for train, validation, n_train, n_validation in encode(tasks):
            shards.append(train, validation, n_train, n_validation)
            written += len(train) + len(validation)
            bar.update(len(train) + len(validation))
            bar.set_postfix(documents=f"{state.documents:,}", refresh=False)
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


class _Encoder:
    """A context manager giving `encode(tasks)` -> results in task order, on `workers` processes.

    At most two tasks per worker are in flight, so a huge source is never read ahead into memory.
    """

    def __init__(self, tokenizer: Any, workers: int):
        self.tokenizer, self.workers = tokenizer, workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            self.pool = _pool_context().Pool(self.workers, initializer=_init_worker, initargs=(self.tokenizer.encoder,))
        return self.encode

    def encode(self, tasks: Iterator[tuple]) -> Iterator[tuple]:
        if self.pool is None:  # in this process, where the tokenizer may use its own threads
            for task in tasks:
                yield encode_chunk(self.tokenizer.encoder, task)
            return
        pending: deque = deque()
        for task in tasks:
            pending.append(self.pool.apply_async(_encode_in_worker, (task,)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _summary(folder: Path, metadata: dict[str, Any], tokens_per_sec: float) -> dict[str, Any]:
    splits = metadata["splits"]
    return {
        "folder": str(folder),
        "documents": metadata["documents"],
        "train_tokens": splits["train"]["tokens"],
        "validation_tokens": splits["validation"]["tokens"],
        "shards": sum(len(splits[s]["shards"]) for s in SPLITS),
        "tokens_per_sec": tokens_per_sec,
        "fingerprint": metadata["fingerprint"],
    }
