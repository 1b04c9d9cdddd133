"""A shuffled order of `n` items, computed item by item from a key: no table of size `n`.

A billion-window corpus would need 8 GB for an explicit `np.random.permutation`; this is
a keyed Feistel network on the smallest even number of bits that covers `n`, with cycle
walking to stay inside `range(n)` (the construction of format-preserving encryption).
It is a bijection for every key, so one pass over the data sees every item exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ROUNDS = 4
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit flips about half the output bits."""
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    return x ^ (x >> np.uint64(31))


class Permutation:
    """A pseudo-random bijection of `range(n)` chosen by `key`.

    Args:
        n: the number of items (>= 1).
        key: integers (e.g. `(seed, pass)`) that pick the permutation.

    Example:
        >>> order = Permutation(10, key=(0, 0))
        >>> sorted(order(np.arange(10)).tolist()) == list(range(10))
        True
    """

    def __init__(self, n: int, key: Sequence[int]):
        if n < 1:
            raise ValueError(f"Argument `n` must be >= 1. Received: n={n}")
        self.n = int(n)
        half = max(1, (int(n - 1).bit_length() + 1) // 2)
        self._half = np.uint64(half)
        self._mask = np.uint64((1 << half) - 1)
        seed = np.random.SeedSequence([int(k) for k in key])
        self._keys = seed.generate_state(_ROUNDS, dtype=np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        with np.errstate(over="ignore"):
            for key in self._keys:
                left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << self._half) | right

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        """The position in the shuffled order of each `index` (`0 <= index < n`)."""
        x = np.asarray(index, dtype=np.uint64).copy()
        if x.size and int(x.max()) >= self.n:
            raise IndexError(f"index {int(x.max())} out of range for a permutation of {self.n}")
        out = self._feistel(x)
        outside = out >= self.n
        while outside.any():  # cycle walking: the domain is < 4n, so a few rounds at most on average
            out[outside] = self._feistel(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)
