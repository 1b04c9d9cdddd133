import json

import numpy as np
import pytest

from theseus.config import ConfigError
from theseus.data import ByteTokenizer, TokenShards
from theseus.data.shards import METADATA, PROGRESS, ShardWriter, write_metadata


def test_a_shard_has_its_final_name_only_once_complete(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.uint16)
    assert writer.close() is None  # nothing written, no file
    writer.append(np.array([1, 2, 3]))
    writer.append(np.array([65535], dtype=np.uint32))
    assert [p.name for p in (tmp_path / "train").iterdir()] == [".00000.bin.tmp"]
    entry = writer.close()
    assert entry == {"file": "train/00000.bin", "tokens": 4}
    assert (tmp_path / "train" / "00000.bin").read_bytes() == np.array([1, 2, 3, 65535], dtype="<u2").tobytes()
    writer.append(np.array([7]))
    assert writer.close() == {"file": "train/00001.bin", "tokens": 1}


TRAIN_SHARDS = (np.arange(10), np.arange(10, 15))
VALIDATION_SHARDS = (np.arange(3),)


def make_folder(tmp_path, tokens=TRAIN_SHARDS, validation=VALIDATION_SHARDS):
    splits = {}
    for split, arrays in (("train", tokens), ("validation", validation)):
        writer = ShardWriter(tmp_path, split, np.uint16)
        shards = []
        for array in arrays:
            writer.append(array)
            shards.append(writer.close())
        splits[split] = {"documents": 1, "tokens": int(sum(map(len, arrays))), "shards": shards}
    tokenizer = ByteTokenizer()
    write_metadata(
        tmp_path,
        {
            "tokenizer": {"name": "byte", "fingerprint": tokenizer.fingerprint, "vocab_size": 257, "eos_id": 256},
            "source": {"source": "test"},
            "validation_fraction": 0.1,
            "documents": 2,
            "dtype": "uint16",
            "splits": splits,
        },
    )
    return tmp_path


def test_shards_are_memory_mapped_read_only(tmp_path):
    shards = TokenShards(make_folder(tmp_path))
    train = shards.split("train")
    assert all(isinstance(a, np.memmap) for a in train)
    np.testing.assert_array_equal(np.concatenate(train), np.arange(15))
    with pytest.raises(ValueError):
        train[0][0] = 1
    assert shards.tokens("validation") == 3


def test_missing_incomplete_damaged_or_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=f"no token shards in {tmp_path} .* make them with the data/tokenize job"):
        TokenShards(tmp_path)
    (tmp_path / PROGRESS).write_text("{}")
    with pytest.raises(ConfigError, match="are incomplete .* run the data/tokenize job again to finish them"):
        TokenShards(tmp_path)

    folder = make_folder(tmp_path / "made")
    shard = folder / "train" / "00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(
        ConfigError, match=r"token shard .*00001.bin is missing or damaged \(8 bytes, metadata says 5 tokens"
    ):
        TokenShards(folder).split("train")

    other = tmp_path / "other"
    other.mkdir()
    (other / METADATA).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match="is not theseus token-shard metadata"):
        TokenShards(other)


def test_shards_refuse_another_tokenizer(tmp_path, bpe_folder):
    from theseus.data import load_tokenizer

    shards = TokenShards(make_folder(tmp_path))
    shards.check_tokenizer(ByteTokenizer())
    with pytest.raises(
        ConfigError,
        match="data/tokenizer: token shards in .* were made with tokenizer 'byte' .* set data/tokenizer to theirs",
    ):
        shards.check_tokenizer(load_tokenizer(str(bpe_folder)))
