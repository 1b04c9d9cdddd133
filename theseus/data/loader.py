"""Token windows for `model.fit`: packed, deterministic and resumable by step.

The token stream is cut into non-overlapping `block_size + 1` windows (inputs are the
first `block_size` tokens, targets the last). Training batch `step` is a pure function
of `(seed, step)`: windows are shuffled per pass over the data with a seed derived from
the pass number, so a run restarted at step k sees exactly the batches an uninterrupted
run would, with no loader state to save beyond the step itself.
"""

from __future__ import annotations

import numpy as np
import keras


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


def _windows(tokens: np.ndarray, block_size: int) -> np.ndarray:
    window = block_size + 1
    n = len(tokens) // window
    return np.asarray(tokens[: n * window]).reshape(n, window)


class TokenWindows(keras.utils.PyDataset):
    """Training batches `(inputs, targets)`, each `(batch_size, block_size)` int32.

    Args:
        tokens: the training token stream (any integer array, memory-mapped is fine).
        block_size: tokens per example.
        batch_size: examples per batch.
        steps: number of batches (the dataset's length).
        seed: shuffling seed.
        start_step: the global step of batch 0 (to resume a run at that step).

    Feed it to `fit(..., shuffle=False)`: the order is already shuffled, deterministically.
    """

    def __init__(self, tokens, block_size: int, batch_size: int, steps: int, seed: int = 0, start_step: int = 0):
        super().__init__()
        self.windows = _windows(tokens, block_size)
        if len(self.windows) < batch_size:
            raise ValueError(f"{len(self.windows)} windows of {block_size + 1} tokens < batch_size {batch_size}")
        self.batch_size, self.steps, self.seed, self.start_step = batch_size, steps, seed, start_step
        self.batches_per_pass = len(self.windows) // batch_size
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps

    def order(self, data_pass: int) -> np.ndarray:
        """The window order of pass `data_pass` over the data."""
        if self._order is None or self._order[0] != data_pass:
            rng = np.random.default_rng([self.seed, data_pass])
            self._order = (data_pass, rng.permutation(len(self.windows)))
        return self._order[1]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of global training step `step`."""
        data_pass, index = divmod(step, self.batches_per_pass)
        rows = self.order(data_pass)[index * self.batch_size : (index + 1) * self.batch_size]
        windows = self.windows[rows].astype(np.int32)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.steps:
            raise IndexError(index)
        return self.batch(self.start_step + index)


class ValidationWindows(keras.utils.PyDataset):
    """The validation windows in order, in full batches (one compiled shape), at most
    `max_batches` of them: the same fixed set at every evaluation."""

    def __init__(self, tokens, block_size: int, batch_size: int, max_batches: int | None = None):
        super().__init__()
        self.windows = _windows(tokens, block_size).astype(np.int32)
        self.batch_size = batch_size
        if len(self.windows) < batch_size:
            raise ValueError(f"{len(self.windows)} validation windows < batch_size {batch_size}: hold out more")
        n = len(self.windows) // batch_size
        self.n_batches = min(n, max_batches) if max_batches else n

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        windows = self.windows[index * self.batch_size : (index + 1) * self.batch_size]
        return windows[:, :-1], windows[:, 1:]
