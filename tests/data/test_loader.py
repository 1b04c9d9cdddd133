import numpy as np
import pytest

from theseus.data import ByteTokenizer, TokenWindows, ValidationWindows, embedded_corpus, read_text_source, split_tokens


def test_byte_tokenizer_round_trips_and_separates_documents():
    tok = ByteTokenizer()
    text = "héllo wörld ✓"
    assert tok.decode(tok.encode(text)) == text
    stream = tok.encode_documents(["ab", "c"])
    assert stream.tolist() == [97, 98, 256, 99, 256]


def test_embedded_corpus_is_real_text_and_stable():
    docs = embedded_corpus()
    assert len(docs) > 50 and sum(map(len, docs)) > 400_000
    assert docs == embedded_corpus()
    assert "def " in "".join(docs)


def test_text_sources(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "skip.bin").write_bytes(b"\0")
    assert read_text_source(str(tmp_path)) == ["first", "second"]
    assert read_text_source(str(tmp_path / "b.txt")) == ["second"]
    with pytest.raises(FileNotFoundError, match="data source not found"):
        read_text_source(str(tmp_path / "missing"))


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


def test_validation_windows_are_fixed_full_batches():
    val = ValidationWindows(np.arange(17 * 10), 16, 4, max_batches=5)
    assert len(val) == 2
    np.testing.assert_array_equal(val[0][0][:, 0], [0, 17, 34, 51])
