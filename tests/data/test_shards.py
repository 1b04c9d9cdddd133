import hashlib
import json
import os
import re

import numpy as np
import pytest

from theseus.config import ConfigError, exit_status
from theseus.data import ByteTokenizer, Source, TokenShards, load_tokenizer, tokenize_to_shards, training_data
from theseus.data import shards as shards_module
from theseus.data.config import DataConfig
from theseus.data.shards import METADATA, PROGRESS, VERIFIED, ShardWriter, fingerprint, write_metadata


def test_a_shard_has_its_final_name_only_once_complete(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.uint16)
    assert writer.close() is None  # nothing written, no file
    writer.append(np.array([1, 2, 3]))
    writer.append(np.array([65535], dtype=np.uint32))
    assert [p.name for p in (tmp_path / "train").iterdir()] == [".00000.bin.tmp"]
    entry = writer.close()
    data = np.array([1, 2, 3, 65535], dtype="<u2").tobytes()
    assert entry == {"file": "train/00000.bin", "tokens": 4, "bytes": 8, "sha256": hashlib.sha256(data).hexdigest()}
    assert (tmp_path / "train" / "00000.bin").read_bytes() == data
    writer.append(np.array([7]))
    assert writer.close() == {
        "file": "train/00001.bin",
        "tokens": 1,
        "bytes": 2,
        "sha256": hashlib.sha256(np.array([7], dtype="<u2").tobytes()).hexdigest(),
    }


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


def hashed(monkeypatch):
    """The names of the shards hashed from now on (a list that grows)."""
    calls, sha256 = [], shards_module._sha256

    def counting(path):
        calls.append(f"{path.parent.name}/{path.name}")
        return sha256(path)

    monkeypatch.setattr(shards_module, "_sha256", counting)
    return calls


def test_a_shard_altered_after_it_was_written_is_one_error_naming_it(tmp_path, capsys):
    folder = make_folder(tmp_path)
    shard = folder / "train" / "00000.bin"
    data = bytearray(shard.read_bytes())
    data[3] ^= 1  # one bit, same size
    shard.write_bytes(bytes(data))
    config = DataConfig(source=str(folder))
    with pytest.raises(ConfigError) as error:
        training_data(config, ByteTokenizer(), 4)  # as every training and evaluation job opens its data
    assert exit_status(error.value) == 2  # what the CLI and the recipes do with it
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"theseus: error: token shard {re.escape(str(shard))} is damaged: its SHA-256 is [0-9a-f]{{16}}\.\.\., "
        r"metadata.json says [0-9a-f]{16}\.\.\. \(it changed after data/tokenize wrote it\); .*data/tokenize",
        lines[0],
    ), lines


def test_a_damaged_shard_is_refused_before_a_job_writes_anything(tmp_path):
    folder = make_folder(tmp_path)
    shard = folder / "validation" / "00000.bin"
    shard.write_bytes(bytes(reversed(shard.read_bytes())))  # same size, other bytes
    with pytest.raises(ConfigError, match="00000.bin is damaged: its SHA-256"):
        DataConfig(source=str(folder)).check_sources()  # what every job's constructor calls


def test_checksums_are_verified_once_per_file_version(tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    calls = hashed(monkeypatch)
    TokenShards(folder).split("train")
    assert sorted(calls) == ["train/00000.bin", "train/00001.bin"]
    TokenShards(folder).split("train")  # a restarted job: nothing hashed again
    TokenShards(folder).split("validation")
    assert sorted(calls) == ["train/00000.bin", "train/00001.bin", "validation/00000.bin"]
    assert set(json.loads((folder / VERIFIED).read_text())) == {
        "train/00000.bin",
        "train/00001.bin",
        "validation/00000.bin",
    }
    # Bytes changed with size and modification time kept pass the quick check; recheck finds them.
    shard = folder / "train" / "00001.bin"
    stat = shard.stat()
    shard.write_bytes(shard.read_bytes()[::-1])
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    TokenShards(folder).split("train")
    with pytest.raises(ConfigError, match="00001.bin is damaged: its SHA-256"):
        TokenShards(folder).verify(recheck=True)
    # Changed as files change (a new modification time): hashed again at open, and refused.
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConfigError, match="00001.bin is damaged: its SHA-256"):
        TokenShards(folder).split("train")


def test_folders_made_before_checksums_still_load_with_their_sizes_checked(tmp_path, capsys):
    folder = make_folder(tmp_path)
    metadata = json.loads((folder / METADATA).read_text())
    for split in metadata["splits"].values():
        for shard in split["shards"]:
            del shard["bytes"], shard["sha256"]
    (folder / METADATA).write_text(json.dumps(metadata))
    shards = TokenShards(folder)
    assert "have no checksums (made by an older theseus): only their sizes are checked" in capsys.readouterr().out
    np.testing.assert_array_equal(np.concatenate(shards.split("train")), np.arange(15))
    assert fingerprint(metadata) == shards.fingerprint  # a folder made again with checksums keeps its fingerprint
    shard = folder / "train" / "00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ConfigError, match=r"00001.bin is missing or damaged \(8 bytes"):
        TokenShards(folder).split("train")


def test_the_tokenize_job_records_sizes_and_checksums_so_training_hashes_nothing(tmp_path, monkeypatch):
    tokenize_to_shards(
        Source("embedded"), load_tokenizer("byte"), tmp_path, shard_tokens=100_000, workers=1, progress=False
    )
    metadata = TokenShards(tmp_path).metadata
    entries = [shard for split in metadata["splits"].values() for shard in split["shards"]]
    assert len(entries) >= 4
    for entry in entries:
        data = (tmp_path / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    calls = hashed(monkeypatch)
    training_data(DataConfig(source=str(tmp_path)), ByteTokenizer(), 64)
    assert calls == []
