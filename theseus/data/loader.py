"""Token windows for `model.fit`: packed, shuffled, mixed, deterministic and resumable by step.

A token stream (one array, or the shards of one stream read as if concatenated, memory-
mapped) is cut into non-overlapping `block_size + 1` windows: inputs are the first
`block_size` tokens, targets the last. Training batch `step` holds global windows
`step * batch_size ...`; global window `g` maps to (source, item) through the mixture
(exact shares, see `mixture_items`) and the item to a window through that source's
shuffled order for that pass over it (`Permutation(seed, source, pass)`). So a batch is a
pure function of `(seed, step)`: a run restarted at step k sees exactly the batches an
uninterrupted run would, and the checkpoint's step is the whole loader position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import keras
import numpy as np

from theseus.base.targets import IGNORE_INDEX
from theseus.data.permutation import Permutation


def split_tokens(tokens: np.ndarray, validation_fraction: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The stream split at a window boundary: the last `validation_fraction` held out."""
    window = block_size + 1
    n_windows = len(tokens) // window
    n_val = max(1, int(round(n_windows * validation_fraction))) if validation_fraction > 0 else 0
    if n_windows - n_val < 1:
        raise ValueError(
            f"{len(tokens)} tokens make {n_windows} windows of {window}: too few to train on "
            f"with validation_fraction={validation_fraction}"
        )
    cut = (n_windows - n_val) * window
    return tokens[:cut], tokens[cut : n_windows * window]


class Examples(Protocol):
    """What the batchers read: `len()` examples, and `examples(ids)` -> (inputs, targets),
    each `(len(ids), block_size)` int32."""

    def __len__(self) -> int: ...

    def examples(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class PackedWindows:
    """Non-overlapping `block_size + 1` windows of one token stream.

    Args:
        tokens: an integer array, or a list of arrays (shards, e.g. `np.memmap`s) read as
            one stream: a window may span two shards; only the stream's tail is dropped.
        block_size: tokens per example.
    """

    def __init__(self, tokens: np.ndarray | Sequence[np.ndarray], block_size: int):
        self.shards = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
        self.block_size = block_size
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.n_tokens = int(self.offsets[-1])
        self.n_windows = self.n_tokens // (block_size + 1)

    def __len__(self) -> int:
        return self.n_windows

    def windows(self, ids: np.ndarray) -> np.ndarray:
        """Windows `ids` as int32, `(len(ids), block_size + 1)`."""
        width = self.block_size + 1
        out = np.empty((len(ids), width), dtype=np.int32)
        starts = np.asarray(ids, dtype=np.int64) * width
        first = np.searchsorted(self.offsets, starts, side="right") - 1
        for row, (start, shard) in enumerate(zip(starts, first)):
            filled = 0
            while filled < width:  # more than one pass only when a window spans shards
                local = start + filled - self.offsets[shard]
                piece = self.shards[shard][local : local + width - filled]
                out[row, filled : filled + len(piece)] = piece
                filled += len(piece)
                shard += 1
        return out

    def examples(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        windows = self.windows(ids)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]


def mixture_items(index: np.ndarray, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Which source global item `index` comes from, and which of that source's items it is.

    Sources are split off one at a time: source k takes share `q = w_k / (w_k + ... + w_K)`
    of what is left, and item n of what is left goes to source k iff
    `floor((n + 1) q) > floor(n q)`. Among the first N items source k then holds exactly
    `floor(N q)` (off by at most one per source from `N w_k`), with no randomness, and each
    source's items are numbered 0, 1, 2, ... in order.
    """
    index = np.asarray(index, dtype=np.int64)
    total = float(sum(weights))
    source = np.full(index.shape, len(weights) - 1, dtype=np.int64)
    item = index.copy()
    rest = np.ones(index.shape, dtype=bool)  # still in "what is left"
    remaining = total
    for k, weight in enumerate(weights[:-1]):
        q = weight / remaining
        n = item[rest]
        before = np.floor(n * q).astype(np.int64)
        here = np.floor((n + 1) * q).astype(np.int64) > before
        chosen = np.flatnonzero(rest)[here]
        source[chosen] = k
        item[chosen] = before[here]
        left = np.flatnonzero(rest)[~here]
        item[left] = n[~here] - before[~here]
        rest[chosen] = False
        remaining -= weight
    return source, item


def _sources(tokens: Any, block_size: int, weights: Sequence[float] | None) -> tuple[list[Examples], list[float]]:
    """Normalise the loaders' `tokens` / `weights` arguments to (sources, weights)."""
    if weights is None:
        streams, weights = [tokens], [1.0]
    else:
        streams, weights = list(tokens), [float(w) for w in weights]
        if len(streams) != len(weights) or not streams:
            raise ValueError(f"{len(streams)} sources but {len(weights)} weights")
        if min(weights) <= 0:
            raise ValueError(f"mixture weights must be > 0, got {weights}")
    sources = [s if hasattr(s, "examples") else PackedWindows(s, block_size) for s in streams]
    return sources, weights


class TokenWindows(keras.utils.PyDataset):
    """Training batches `(inputs, targets)`, each `(batch_size, block_size)` int32.

    Args:
        tokens: one token stream (an integer array, or a list of shard arrays read as one
            stream), or an `Examples` source (e.g. chat rows); with `weights`, a list of
            such sources, mixed in those proportions.
        block_size: tokens per example.
        batch_size: examples per batch.
        steps: number of batches (the dataset's length).
        seed: shuffling seed.
        start_step: the global step of batch 0 (to resume a run at that step).
        weights: the mixture's weights (any positive numbers; normalised).
        prefetch: batches prepared ahead in a background thread (0 = none), so that
            `fit` does not wait on memory-mapped reads.

    Feed it to `fit(..., shuffle=False)`: the order is already shuffled, deterministically.
    """

    def __init__(
        self,
        tokens: Any,
        block_size: int,
        batch_size: int,
        steps: int,
        seed: int = 0,
        start_step: int = 0,
        *,
        weights: Sequence[float] | None = None,
        prefetch: int = 8,
    ):
        super().__init__()
        self.sources, self.weights = _sources(tokens, block_size, weights)
        for k, source in enumerate(self.sources):
            if len(source) < 1:
                raise ValueError(f"source {k} has no window of {block_size + 1} tokens")
        if weights is None and len(self.sources[0]) < batch_size:
            raise ValueError(f"{len(self.sources[0])} windows of {block_size + 1} tokens < batch_size {batch_size}")
        self.block_size, self.batch_size = block_size, batch_size
        self.steps, self.seed, self.start_step = steps, seed, start_step
        self.prefetch = prefetch
        self._orders: dict[tuple[int, int], Permutation] = {}
        self._prefetcher: _Prefetcher | None = None

    def __len__(self) -> int:
        return self.steps

    def _order(self, source: int, data_pass: int) -> Permutation:
        key = (source, data_pass)
        order = self._orders.get(key)
        if order is None:
            order = Permutation(len(self.sources[source]), key=(self.seed, source, data_pass))
            if len(self._orders) > 64:
                self._orders = {}
            self._orders[key] = order
        return order

    def locate(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, window) of each row of the batch of global step `step`."""
        rows = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        source, item = mixture_items(rows, self.weights)
        window = np.empty_like(item)
        for k in np.unique(source):
            mine = source == k
            data_pass, position = np.divmod(item[mine], len(self.sources[k]))
            chosen = np.empty_like(position)
            for p in np.unique(data_pass):
                at = data_pass == p
                chosen[at] = self._order(int(k), int(p))(position[at])
            window[mine] = chosen
        return source, window

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of global training step `step`."""
        source, window = self.locate(step)
        inputs = np.empty((self.batch_size, self.block_size), dtype=np.int32)
        targets = np.empty_like(inputs)
        for k in np.unique(source):
            mine = source == k
            inputs[mine], targets[mine] = self.sources[k].examples(window[mine])
        return inputs, targets

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.steps:
            raise IndexError(index)
        if self.prefetch <= 0:
            return self.batch(self.start_step + index)
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(lambda i: self.batch(self.start_step + i), self.prefetch)
        return self._prefetcher.get(index, self.steps)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_prefetcher"] = None  # a thread does not pickle; a copy starts its own
        return state


class _Prefetcher:
    """Computes `fn(i + 1) ... fn(i + depth)` in a background thread while batch `i` trains.

    Any request order is correct (a batch not ready is computed on the spot); in order,
    as `fit` asks, every batch is ready before it is asked for if the loader outruns the step.
    """

    def __init__(self, fn: Callable[[int], Any], depth: int):
        self.fn, self.depth = fn, depth
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="theseus-prefetch")
        self.pending: dict[int, Future] = {}

    def get(self, index: int, limit: int) -> Any:
        future = self.pending.pop(index, None)
        for stale in [i for i in self.pending if not index < i <= index + self.depth]:
            self.pending.pop(stale).cancel()
        for ahead in range(index + 1, min(index + 1 + self.depth, limit)):
            if ahead not in self.pending:
                self.pending[ahead] = self.executor.submit(self.fn, ahead)
        return future.result() if future is not None else self.fn(index)


class ValidationWindows(keras.utils.PyDataset):
    """The validation windows in order, at most `max_batches` batches of them: the same fixed
    set at every evaluation. Every batch has `batch_size` rows (one compiled shape): a last
    partial batch is filled with rows whose targets are all `IGNORE_INDEX`, so they add no loss.

    A batch is `(inputs, targets, sample_weight)`, the weight one number per row (repeated
    along it, shaped like the targets as every backend's loss wants). Keras's `evaluate`
    reports the mean of per-batch means (each over that batch's counted targets); the weights,
    each batch's share of the set's counted targets, make that the mean over every counted
    target of the set, whatever the padding or the prompt masks. With gradient accumulation a
    batch is fed as `parts` consecutive micro-batches (set it before the first batch is read):
    the weights are then per micro-batch.

    `tokens` and `weights` are as for `TokenWindows`; a mixture's validation batches hold
    its sources in the mixture's proportions, each source's windows in order (a source
    with no validation windows, e.g. tokenized with no validation share, is left out).
    """

    def __init__(
        self,
        tokens: Any,
        block_size: int,
        batch_size: int,
        max_batches: int | None = None,
        *,
        weights: Sequence[float] | None = None,
        parts: int = 1,
    ):
        super().__init__()
        sources, weights = _sources(tokens, block_size, weights)
        kept = [k for k, source in enumerate(sources) if len(source)] or list(range(len(sources)))
        self.sources, self.weights = [sources[k] for k in kept], [weights[k] for k in kept]
        self.batch_size, self.block_size, self.parts = batch_size, block_size, parts
        if batch_size % parts:
            raise ValueError(f"{parts} micro-batches do not divide a validation batch of {batch_size}")
        self.rows = _rows(self.sources, self.weights)  # the windows read, each once
        if self.rows < 1:
            raise ValueError(
                f"{[len(s) for s in self.sources]} validation windows of {block_size + 1} tokens: "
                "nothing to validate on, hold out more"
            )
        self.rows = min(self.rows, max_batches * batch_size) if max_batches else self.rows
        self.n_batches = -(-self.rows // batch_size)
        self._sample_weight: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < self.n_batches:
            raise IndexError(index)
        if self._sample_weight is None:
            self._sample_weight = self.sample_weight()
        inputs, targets = self.examples(index)
        weight = self._sample_weight[index * self.batch_size : (index + 1) * self.batch_size]
        return inputs, targets, np.repeat(weight[:, None], targets.shape[1], axis=1)  # (B, T)

    def examples(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `index`'s `(inputs, targets)`; a padding row is token 0 with `IGNORE_INDEX` targets."""
        first = index * self.batch_size
        real = min(self.batch_size, self.rows - first)
        source, item = mixture_items(first + np.arange(real, dtype=np.int64), self.weights)
        inputs = targets = None
        for k in np.unique(source):
            mine = source == k
            x, y = self.sources[k].examples(item[mine])
            if inputs is None:
                inputs = np.zeros((self.batch_size, x.shape[1]), dtype=np.int32)
                targets = np.full_like(inputs, IGNORE_INDEX)
            inputs[:real][mine], targets[:real][mine] = x, y
        return inputs, targets

    def sample_weight(self) -> np.ndarray:
        """Every row's weight, `(len(self) * batch_size,)` float32: each micro-batch's
        counted targets over the set's, times the number of micro-batches."""
        if all(isinstance(s, PackedWindows) for s in self.sources):  # every target counts: no need to read them
            counted = (np.arange(self.n_batches * self.batch_size) < self.rows) * self.block_size
        else:
            counted = np.concatenate([np.sum(self.examples(i)[1] != IGNORE_INDEX, axis=1) for i in range(len(self))])
        per_part = counted.reshape(self.n_batches * self.parts, -1).sum(axis=1)  # (micro-batches,)
        weight = per_part * (len(per_part) / max(int(per_part.sum()), 1))
        return np.repeat(weight, self.batch_size // self.parts).astype(np.float32)


def mixture_counts(n: int, weights: Sequence[float]) -> list[int]:
    """How many of the first `n` global items each source holds (as `mixture_items` assigns them)."""
    counts, rest, remaining = [], int(n), float(sum(weights))
    for weight in weights[:-1]:
        count = int(np.floor(rest * (weight / remaining)))
        counts.append(count)
        rest -= count
        remaining -= weight
    return counts + [rest]


def _rows(sources: Sequence[Examples], weights: Sequence[float]) -> int:
    """The most validation rows that read no window twice."""

    def fits(n: int) -> bool:
        return all(c <= len(s) for c, s in zip(mixture_counts(n, weights), sources))

    low, high = 0, sum(len(s) for s in sources)
    while low < high:  # counts grow with n: bisect for the last n that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
