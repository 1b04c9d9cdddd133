import keras
import numpy as np
import pytest

from theseus.base.targets import IGNORE_INDEX
from theseus.data import PackedWindows, TokenWindows, ValidationWindows, split_tokens
from theseus.data.loader import mixture_counts, mixture_items


def test_split_holds_out_whole_windows_at_the_end():
    tokens = np.arange(1000)
    train, val = split_tokens(tokens, 0.1, block_size=9)  # windows of 10
    assert len(train) == 900 and len(val) == 100
    assert val[0] == 900


def test_batches_are_deterministic_cover_each_pass_and_resume_by_step():
    tokens = np.arange(17 * 40)
    full = TokenWindows(tokens, 16, 4, steps=25, seed=3)
    batches = [full[i] for i in range(25)]
    x, y = batches[0]
    assert x.shape == (4, 16) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    # one pass (10 batches) sees every window once
    first_pass = np.concatenate([b[0][:, 0] for b in batches[:10]])
    assert sorted(first_pass.tolist()) == list(range(0, 17 * 40, 17))
    # the second pass is a different order
    assert not np.array_equal(batches[10][0], batches[0][0])
    # a loader started at step 13 gives exactly the batches an uninterrupted one gives
    resumed = TokenWindows(tokens, 16, 4, steps=12, seed=3, start_step=13)
    for i in range(12):
        np.testing.assert_array_equal(resumed[i][0], batches[13 + i][0])
    other_seed = TokenWindows(tokens, 16, 4, steps=1, seed=4)
    assert not np.array_equal(other_seed[0][0], batches[0][0])


def test_shards_read_as_one_stream_windows_may_span_them():
    stream = np.arange(1000, dtype=np.uint16)
    cuts = [0, 7, 7, 300, 301, 650, 1000]  # an empty shard, a one-token shard, uneven sizes
    shards = [stream[a:b] for a, b in zip(cuts, cuts[1:])]
    packed, reference = PackedWindows(shards, 9), PackedWindows(stream, 9)
    assert len(packed) == len(reference) == 100
    ids = np.arange(100)[::-1]
    np.testing.assert_array_equal(packed.windows(ids), stream.reshape(100, 10)[ids].astype(np.int32))
    a = TokenWindows(shards, 9, 8, steps=30, seed=1)
    b = TokenWindows(stream, 9, 8, steps=30, seed=1)
    for i in range(30):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])


def two_sources():
    """Source 0 holds tokens < 10,000, source 1 tokens >= 10,000; different sizes."""
    return [np.arange(0, 17 * 300), np.arange(10_000, 10_000 + 17 * 50)]


def test_a_70_30_mixture_gives_tokens_in_that_ratio_over_1000_windows():
    data = TokenWindows(two_sources(), 16, 10, steps=100, seed=0, weights=[0.7, 0.3])
    counts = np.zeros(2)
    for i in range(100):  # 1,000 windows
        x, y = data[i]
        counts += [np.sum(x < 10_000) + np.sum(y[:, -1] < 10_000), np.sum(x >= 10_000) + np.sum(y[:, -1] >= 10_000)]
    share = counts / counts.sum()
    assert abs(share[0] - 0.7) < 0.02 and abs(share[1] - 0.3) < 0.02
    assert counts.sum() == 1000 * 17


def test_mixtures_are_deterministic_and_resume_exactly():
    kwargs = dict(block_size=16, batch_size=6, seed=5, weights=[2.0, 1.0])
    a = TokenWindows(two_sources(), steps=60, **kwargs)
    b = TokenWindows(two_sources(), steps=60, **kwargs)
    restored = TokenWindows(two_sources(), steps=23, start_step=37, **kwargs)
    for i in range(60):
        np.testing.assert_array_equal(a[i][0], b[i][0])
    for i in range(23):
        np.testing.assert_array_equal(restored[i][0], a[37 + i][0])
        np.testing.assert_array_equal(restored[i][1], a[37 + i][1])
    other = TokenWindows(two_sources(), steps=1, **{**kwargs, "seed": 6})
    assert not np.array_equal(other[0][0], a[0][0])


def test_each_source_sees_every_window_once_per_pass():
    data = TokenWindows(two_sources(), 16, 10, steps=60, seed=0, weights=[0.7, 0.3])
    small = [w for i in range(60) for w in data[i][0][:, 0] if w >= 10_000]  # 180 windows of a 50-window source
    passes = [sorted(small[p * 50 : (p + 1) * 50]) for p in range(3)]
    expected = list(range(10_000, 10_000 + 17 * 50, 17))
    assert passes[0] == passes[1] == passes[2] == expected
    assert small[:50] != small[50:100]  # each pass in its own order


def test_mixture_items_number_each_sources_items_in_order():
    weights = [0.5, 0.2, 0.3]
    source, item = mixture_items(np.arange(10_000), weights)
    for k in range(3):
        np.testing.assert_array_equal(item[source == k], np.arange(np.sum(source == k)))
    for n in (1, 9, 10, 777, 10_000):
        assert mixture_counts(n, weights) == [int(np.sum(source[:n] == k)) for k in range(3)]
        assert all(abs(c - n * w) < 2 for c, w in zip(mixture_counts(n, weights), weights))


def test_prefetching_changes_nothing_and_runs_ahead():
    tokens = np.arange(17 * 64)
    plain = TokenWindows(tokens, 16, 4, steps=40, seed=2, prefetch=0)
    ahead = TokenWindows(tokens, 16, 4, steps=40, seed=2, prefetch=3)
    for i in [0, 1, 2, 3, 10, 9, 39, 0, 5]:  # in order, skipping, backwards
        np.testing.assert_array_equal(ahead[i][0], plain[i][0])
    ahead = TokenWindows(tokens, 16, 4, steps=40, seed=2, prefetch=3)
    ahead[0]
    ready = ahead._prefetcher.pending[1].result(timeout=10)  # made without being asked for
    np.testing.assert_array_equal(ready[0], plain[1][0])
    assert sorted(ahead._prefetcher.pending) == [1, 2, 3]


def test_validation_windows_are_fixed_batches_the_last_one_padded():
    val = ValidationWindows(np.arange(17 * 10), 16, 4, max_batches=5)  # 10 windows: 4 + 4 + 2
    assert len(val) == 3
    np.testing.assert_array_equal(val[0][0][:, 0], [0, 17, 34, 51])
    inputs, targets, weight = val[2]
    assert inputs.shape == targets.shape == weight.shape == (4, 16)
    np.testing.assert_array_equal(inputs[:2, 0], [136, 153])
    assert (targets[2:] == IGNORE_INDEX).all() and (targets[:2] != IGNORE_INDEX).all()
    assert len(ValidationWindows(np.arange(17 * 10), 16, 4, max_batches=2)) == 2  # a cap keeps full batches
    with pytest.raises(ValueError, match="do not divide"):
        ValidationWindows(np.arange(17 * 10), 16, 4, parts=3)


class MaskedRows:
    """Rows whose targets are partly `IGNORE_INDEX`, as chats' prompts and padding are."""

    def __init__(self, n, block_size, vocab, seed=0):
        rng = np.random.default_rng(seed)
        self.inputs = rng.integers(0, vocab, (n, block_size)).astype(np.int32)
        self.targets = rng.integers(0, vocab, (n, block_size)).astype(np.int32)
        self.targets[rng.random((n, block_size)) < 0.4] = IGNORE_INDEX

    def __len__(self):
        return len(self.inputs)

    def examples(self, ids):
        return self.inputs[ids], self.targets[ids]


def direct_loss(model, inputs, targets):
    """The mean cross-entropy over every counted target, in float64 numpy, window by window."""
    logits = np.concatenate([keras.ops.convert_to_numpy(model(inputs[i : i + 1])) for i in range(len(inputs))])
    logits = logits.astype("float64")
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    counted = targets != IGNORE_INDEX
    picked = np.take_along_axis(logp, np.where(counted, targets, 0)[..., None], -1)[..., 0]
    return -picked[counted].mean()


def test_validation_loss_is_the_mean_over_real_targets_with_a_partial_last_batch():
    from theseus.model.models import GPT
    from theseus.training.accumulation import MicroBatches

    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model.compile()
    tokens = np.random.default_rng(0).integers(0, 50, 17 * 11)  # 11 windows: batches of 4, 4 and 3 + padding
    x, y = PackedWindows(tokens, 16).examples(np.arange(11))
    rows = MaskedRows(11, 16, 50)
    for source, (inputs, targets) in [(tokens, (x, y)), (rows, (rows.inputs, rows.targets))]:
        expected = direct_loss(model, inputs, targets)
        whole = ValidationWindows(source, 16, 4)
        assert len(whole) == 3
        assert model.evaluate(whole, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, rel=2e-6)
        micro = MicroBatches(ValidationWindows(source, 16, 4, parts=2), 2)  # gradient accumulation's halves
        assert model.evaluate(micro, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, rel=2e-6)


def test_mixture_validation_reads_each_window_at_most_once_in_proportion():
    a, b = np.arange(0, 17 * 40), np.arange(10_000, 10_000 + 17 * 10)
    val = ValidationWindows([a, b], 16, 5, weights=[0.75, 0.25])
    firsts = np.concatenate([val[i][0][:, 0] for i in range(len(val))])
    assert len(set(firsts.tolist())) == len(firsts)  # no window twice
    assert len(val) == 8  # source b's 10 windows run out after 40 rows
    assert np.sum(firsts >= 10_000) == 10 and np.sum(firsts < 10_000) == 30
    np.testing.assert_array_equal(val[3][0], ValidationWindows([a, b], 16, 5, weights=[0.75, 0.25])[3][0])
    ((inputs, targets, _),) = ValidationWindows([a, b], 16, 64, weights=[0.75, 0.25])  # 40 rows, then padding
    assert np.sum(inputs[:40, 0] >= 10_000) == 10 and (targets[40:] == IGNORE_INDEX).all()


def test_a_source_without_validation_windows_is_left_out_of_validation():
    a, empty = np.arange(0, 17 * 8), np.arange(0)
    val = ValidationWindows([a, empty], 16, 4, weights=[0.7, 0.3])
    assert len(val) == 2 and val.weights == [0.7]
    np.testing.assert_array_equal(val[1][0], ValidationWindows(a, 16, 4)[1][0])
    with pytest.raises(ValueError, match=r"\[0\] validation windows of 17 tokens: nothing to validate on"):
        ValidationWindows([empty], 16, 4, weights=[1.0])
