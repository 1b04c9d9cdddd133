import numpy as np
import pytest

from theseus.data import Permutation


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4099, 65536, 100_003])
def test_every_size_is_a_bijection(n):
    order = Permutation(n, key=(7, 1))(np.arange(n))
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_the_key_picks_the_order_and_the_same_key_repeats_it():
    n = 10_000
    a = Permutation(n, key=(0, 0))(np.arange(n))
    np.testing.assert_array_equal(a, Permutation(n, key=(0, 0))(np.arange(n)))
    b = Permutation(n, key=(0, 1))(np.arange(n))
    assert np.mean(a == b) < 0.01  # different passes: different orders
    # item by item, in any grouping, gives the same as all at once
    np.testing.assert_array_equal(Permutation(n, key=(0, 0))(np.array([9_999, 3, 512])), a[[9_999, 3, 512]])


def test_order_looks_shuffled():
    n = 100_000
    order = Permutation(n, key=(3, 0))(np.arange(n))
    # neighbours land far apart, and position and item are uncorrelated
    assert np.median(np.abs(np.diff(order))) > n / 10
    assert abs(np.corrcoef(np.arange(n), order)[0, 1]) < 0.02
    # each tenth of the items is spread evenly over the tenths of the order
    counts = np.histogram(order[: n // 10], bins=10, range=(0, n))[0]
    assert counts.min() > 0.8 * n / 100 and counts.max() < 1.2 * n / 100


def test_out_of_range_is_refused():
    with pytest.raises(IndexError):
        Permutation(10, key=(0,))(np.array([10]))
    with pytest.raises(ValueError, match="must be >= 1"):
        Permutation(0, key=(0,))
