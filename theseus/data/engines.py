"""The engines that encode a source for the `data/tokenize` job (`tokenize/engine`).

Both cut the documents into the same chunks of about a megabyte of text (so that the train
shards close at the same places) and hand back, in document order, each chunk's train and
validation token streams; the job appends them to the shards. Only who reads and encodes
differs:

- `local`: this process reads the source, and a pool of processes on this host encodes
  (`tokenize/workers`, started with forkserver);
- `ray`: Ray actors read and encode, each a range of documents of one or more input files
  (every file of a folder source is a part, read by the actor given its range); the job
  first has the actors measure every part (its documents' lengths), to cut the same chunks
  without reading the text itself. A local Ray cluster is started for the job, or, with
  `RAY_ADDRESS` set, the job joins that cluster (whose nodes need theseus installed).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from theseus.config import ConfigError
from theseus.data.sources import Source
from theseus.data.tokenizers import join_documents

ENGINES = ("local", "ray")
CHUNK_CHARS = 1 << 20  # text per task handed to a worker: large enough to amortise the hand-over
TASK_CHARS = 1 << 25  # at most this much text per Ray task (several chunks, read in one pass)

Result = tuple[np.ndarray, np.ndarray, int, int]  # train ids, validation ids, documents in each


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


def chunk_sizes(lengths: Iterable[int], chars: int) -> list[tuple[int, int]]:
    """(documents, characters) of each chunk that `_chunks` cuts from documents of `lengths`."""
    sizes, count, size = [], 0, 0
    for length in lengths:
        count, size = count + 1, size + int(length)
        if size >= chars:
            sizes.append((count, size))
            count, size = 0, 0
    return sizes + [(count, size)] if count else sizes


def encode_chunk(tokenizer: Any, task: tuple[int, list[str], float]) -> Result:
    """A chunk's train and validation token streams, and how many documents went to each."""
    start, documents, fraction = task
    held_out = is_validation(np.arange(start, start + len(documents)), fraction)
    ids = tokenizer.encode_batch(documents)
    train = join_documents([i for i, v in zip(ids, held_out) if not v], tokenizer.eos_id, tokenizer.dtype)
    validation = join_documents([i for i, v in zip(ids, held_out) if v], tokenizer.eos_id, tokenizer.dtype)
    n_validation = int(np.count_nonzero(held_out))
    return train, validation, len(documents) - n_validation, n_validation


@contextmanager
def encoded_chunks(
    engine: str, source: Source, tokenizer: Any, workers: int, fraction: float, first: int, chars: int
) -> Iterator[tuple[int | None, Iterator[Result]]]:
    """`(documents in the source or None if unknown, results)`: every chunk of the documents
    from `first` on, encoded by `engine`, in document order."""
    if engine == "ray":
        with _ray_chunks(source, tokenizer, workers, fraction, first, chars) as results:
            yield results
        return
    documents = itertools.islice(source.documents(), first, None)
    tasks = ((start, chunk, fraction) for start, chunk in _chunks(documents, first, chars))
    with _Encoder(tokenizer, workers) as encode:
        yield None, encode(tasks)


# ---------------------------------------------------------------------- local: a process pool

_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the pool is the parallelism
    _worker_tokenizer = tokenizer


def _encode_in_worker(task: tuple[int, list[str], float]) -> Result:
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

    def encode(self, tasks: Iterator[tuple]) -> Iterator[Result]:
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


# ---------------------------------------------------------------------- ray: actors


class RayEncoder:
    """One Ray actor: measures parts and encodes document ranges of `parts` (read one after another)."""

    def __init__(self, parts: list[Source], tokenizer: Any):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per actor: the actors are the parallelism
        self.parts, self.tokenizer = parts, tokenizer

    def measure(self, part: int) -> np.ndarray:
        """The length in characters of every document of part `part`."""
        return np.fromiter((len(d) for d in self.parts[part].documents()), dtype=np.int64)

    def encode(self, offsets: list[int], start: int, counts: list[int], fraction: float) -> list[Result]:
        """Chunks of `counts` documents each from global document `start` on, encoded."""
        documents = _read_range(self.parts, offsets, start, start + sum(counts))
        results = []
        for count in counts:
            results.append(encode_chunk(self.tokenizer, (start, list(itertools.islice(documents, count)), fraction)))
            start += count
        return results


def _read_range(parts: list[Source], offsets: list[int], start: int, stop: int) -> Iterator[str]:
    """Global documents `start` to `stop` of the parts, where part k holds `offsets[k]` to `offsets[k + 1]`."""
    for part, low, high in zip(parts, offsets, offsets[1:]):
        if low < stop and high > start:
            yield from itertools.islice(part.documents(), max(start - low, 0), min(stop, high) - low)


def check_engine(engine: str) -> None:
    """A ConfigError now for an unknown engine, or for `ray` without Ray installed."""
    if engine not in ENGINES:
        raise ConfigError(f"tokenize/engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray":
        import_ray()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("tokenize/engine: 'ray' needs Ray: pip install 'theseus[ray]'") from None
    return ray


@contextmanager
def ray_session(workers: int) -> Iterator[Any]:
    """Ray, initialised: the running session if there is one, the cluster at `RAY_ADDRESS` if
    set, else a local cluster of `workers` CPUs (0 = all) on 127.0.0.1, shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not os.environ.get("RAY_ADDRESS"):
        options.update(num_cpus=workers or os.cpu_count(), _node_ip_address="127.0.0.1")
    ray.init(**options)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _ray_chunks(source, tokenizer, workers, fraction, first, chars):
    with ray_session(workers) as ray:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        parts = source.parts()
        actors = [ray.remote(num_cpus=1)(RayEncoder).remote(parts, tokenizer.encoder) for _ in range(n)]
        try:
            measured = _get(ray, [actors[k % n].measure.remote(k) for k in range(len(parts))])
            offsets = np.concatenate([[0], np.cumsum([len(m) for m in measured])]).tolist()
            lengths = np.concatenate(measured) if measured else np.zeros(0, np.int64)
            chunks = chunk_sizes(lengths[first:].tolist(), chars)
            per_task = max(chars, min(TASK_CHARS, int(lengths[first:].sum()) // (4 * n) + 1))
            yield offsets[-1], _in_order(ray, actors, offsets, _tasks(chunks, first, per_task), fraction)
        finally:
            for actor in actors:
                ray.kill(actor)


def _tasks(chunks: list[tuple[int, int]], first: int, per_task: int) -> Iterator[tuple[int, list[int]]]:
    """(first document, documents per chunk): consecutive chunks of about `per_task` characters."""
    start, counts, size = first, [], 0
    for count, chars in chunks:
        counts.append(count)
        size += chars
        if size >= per_task:
            yield start, counts
            start, counts, size = start + sum(counts), [], 0
    if counts:
        yield start, counts


def _in_order(ray, actors, offsets, tasks, fraction) -> Iterator[Result]:
    """The tasks' chunk results in order; at most two tasks per actor in flight."""
    pending: deque = deque()
    for number, (start, counts) in enumerate(tasks):
        pending.append(actors[number % len(actors)].encode.remote(offsets, start, counts, fraction))
        if len(pending) >= 2 * len(actors):
            yield from _get(ray, pending.popleft())
    while pending:
        yield from _get(ray, pending.popleft())


def _get(ray: Any, refs: Any) -> Any:
    """`ray.get`, an actor's ConfigError (a bad line of a source file) raised as the one line it is."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ConfigError):
            raise ConfigError(str(error.cause)) from None
        raise
