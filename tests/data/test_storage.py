"""Sources and token shards named by fsspec URLs: text read from `memory://` and `file://`,
shards written to and read from them (through the local read-through cache), and training
on shards through a URL equal, batch for batch, to training on the local folder, killed
and resumed included. (`memory://` lives in one process: the command-line runs use `file://`.)"""

import gzip
import json
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
from support import run_command

from theseus.config import ConfigError
from theseus.data import Source, TokenShards, TokenWindows, ValidationWindows, load_tokenizer, tokenize_to_shards
from theseus.data import shards as shards_module
from theseus.data.shards import METADATA, PROGRESS, is_shard_folder
from theseus.data.storage import cache_dir
from theseus.experiments import runs
from theseus.experiments.data import Tokenize

KILL_AT = Path(__file__).parents[1] / "training" / "kill_at.py"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh read-through cache per test."""
    monkeypatch.setenv("THESEUS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def memory(tmp_path):
    """A `memory://` folder of this test's own, removed afterwards."""
    url = f"memory://{tmp_path.name}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{tmp_path.name}"):
        fs.rm(f"/{tmp_path.name}", recursive=True)


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*.bin"))}


def remote_bytes(url):
    fs, root = fsspec.core.url_to_fs(url)
    return {f[len(root) + 1 :]: fs.cat_file(f) for f in sorted(fs.find(root)) if f.endswith(".bin")}


def test_text_and_shards_through_memory_urls_equal_the_local_ones(jsonl_corpus, memory, tmp_path):
    with fsspec.open(f"{memory}/text/corpus.jsonl.gz", "wb") as f:
        f.write(gzip.compress(jsonl_corpus.read_bytes()))
    remote_source = Source(f"{memory}/text", text_field="body")
    local_source = Source(str(jsonl_corpus), text_field="body")
    assert [p.source for p in remote_source.parts()] == [f"{memory}/text/corpus.jsonl.gz"]
    assert list(remote_source.documents()) == list(local_source.documents())

    byte = load_tokenizer("byte")
    settings = {"validation_fraction": 0.1, "shard_tokens": 50_000, "workers": 1, "progress": False}
    local = tokenize_to_shards(local_source, byte, tmp_path / "local", **settings)
    remote = tokenize_to_shards(remote_source, byte, f"{memory}/shards", **settings)
    assert is_shard_folder(f"{memory}/shards") and not is_shard_folder(f"{memory}/text")
    assert (
        remote_bytes(f"{memory}/shards") == folder_bytes(tmp_path / "local")
        and len(folder_bytes(tmp_path / "local")) > 5
    )
    assert not fsspec.filesystem("memory").exists(f"/{tmp_path.name}/shards/{PROGRESS}")
    assert remote["train_tokens"] == local["train_tokens"] and remote["tokens_encoded"] == local["tokens_encoded"]
    shards = TokenShards(f"{memory}/shards")
    for split in ("train", "validation"):
        for a, b in zip(shards.split(split), TokenShards(tmp_path / "local").split(split), strict=True):
            np.testing.assert_array_equal(a, b)
            assert Path(a.filename).is_relative_to(cache_dir())  # memory-mapped from the local cache


def test_a_remote_job_stopped_mid_way_resumes_to_the_same_bytes(jsonl_corpus, memory, tmp_path, monkeypatch):
    source, byte = Source(str(jsonl_corpus), text_field="body"), load_tokenizer("byte")
    append, calls = shards_module.ShardWriter.append, [0]

    def append_then_fail(self, ids):
        append(self, ids)
        calls[0] += 1
        if calls[0] == 9:
            raise KeyboardInterrupt  # the job stops between two commits

    monkeypatch.setattr(shards_module.ShardWriter, "append", append_then_fail)
    with pytest.raises(KeyboardInterrupt):
        tokenize_to_shards(source, byte, f"{memory}/shards", shard_tokens=20_000, progress=False)
    progress = json.loads(fsspec.filesystem("memory").cat_file(f"/{tmp_path.name}/shards/{PROGRESS}"))
    assert 0 < progress["documents"] < 79 and not is_shard_folder(tmp_path / "none")
    with pytest.raises(ConfigError, match="are incomplete"):
        TokenShards(f"{memory}/shards")
    monkeypatch.setattr(shards_module.ShardWriter, "append", append)
    resumed = tokenize_to_shards(source, byte, f"{memory}/shards", shard_tokens=20_000, progress=False)
    tokenize_to_shards(source, byte, tmp_path / "local", shard_tokens=20_000, progress=False)
    assert remote_bytes(f"{memory}/shards") == folder_bytes(tmp_path / "local")
    assert resumed["tokens_encoded"] < resumed["train_tokens"] + resumed["validation_tokens"]


def test_a_damaged_remote_shard_is_refused_and_a_missing_filesystem_is_one_line(memory, tmp_path):
    tokenize_to_shards(Source("embedded"), load_tokenizer("byte"), f"{memory}/shards", progress=False)
    fs = fsspec.filesystem("memory")
    path = f"/{tmp_path.name}/shards/train/00000.bin"
    data = bytearray(fs.cat_file(path))
    data[100] ^= 1
    fs.pipe_file(path, bytes(data))
    with pytest.raises(ConfigError, match=rf"token shard {memory}/shards/train/00000.bin is damaged: its SHA-256"):
        TokenShards(f"{memory}/shards").split("train")
    fs.pipe_file(path, bytes(data[:-2]))
    with pytest.raises(ConfigError, match="is missing or damaged"):
        TokenShards(f"{memory}/shards").verify()
    with pytest.raises(ConfigError, match="data/source: cannot open nosuchfs://bucket/shards: .*nosuchfs"):
        TokenShards("nosuchfs://bucket/shards")
    fields, values = runs.configure("data/tokenize", {"tokenize/output": "gs://bucket/shards"}, require=True)
    with pytest.raises(ConfigError, match="tokenize/output: cannot open gs://bucket/shards: .*gcsfs"):
        Tokenize(values, tmp_path / "run")  # gcsfs is not installed here
    assert not (tmp_path / "run").exists()


def test_the_loader_reads_remote_shards_window_for_window(memory, tmp_path):
    byte = load_tokenizer("byte")
    tokenize_to_shards(Source("embedded"), byte, tmp_path / "local", shard_tokens=30_000, progress=False)
    tokenize_to_shards(Source("embedded"), byte, f"{memory}/shards", shard_tokens=30_000, progress=False)
    local, remote = TokenShards(tmp_path / "local"), TokenShards(f"{memory}/shards")
    assert local.fingerprint == remote.fingerprint
    train = [TokenWindows(s.split("train"), 32, 4, 40, seed=3, prefetch=0) for s in (local, remote)]
    resumed = TokenWindows(remote.split("train"), 32, 4, 20, seed=3, start_step=20)  # resumed at step 20
    for step in range(40):
        a, b = train[0][step], train[1][step]
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        if step >= 20:
            np.testing.assert_array_equal(resumed[step - 20][0], a[0])
    validation = [ValidationWindows(s.split("validation"), 32, 4, 3) for s in (local, remote)]
    for index in range(len(validation[0])):
        np.testing.assert_array_equal(validation[0][index][0], validation[1][index][0])


TRAINING = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * 12,
    "training/precision": "float32",
    "logging/checkpoint_interval": 4,
    "logging/log_interval": 1,
    "logging/validation_interval": 6,
    "logging/validation_batches": 2,
    "logging/progress_bar": False,
    "logging/plot": False,
    "topology/devices": 1,
}


def train(tmp_path, name, source, kill_at=None):
    """`theseus run NAME` on shards at `source`; the metrics rows, without timings."""
    fields, values = runs.configure("gpt/train/pretrain", {**TRAINING, "data/source": source}, require=True)
    config = tmp_path / f"{name}.yaml"
    config.write_text(runs.config_text("gpt/train/pretrain", fields, values))
    env = {"THESEUS_CACHE": str(tmp_path / "cli-cache")}
    command = [str(KILL_AT), kill_at] if kill_at else ["-m", "theseus.cli"]
    result = run_command([sys.executable, *command, "run", name, str(config), str(tmp_path / "runs")], env=env)
    if kill_at:
        assert result.returncode == -9, result.stderr[-3000:]
        result = run_command(
            [sys.executable, "-m", "theseus.cli", "run", name, str(config), str(tmp_path / "runs")], env=env
        )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in row.items() if k not in ("tokens_per_sec", "mfu", "mfu_measured", "time")} for row in rows
    ]


@pytest.mark.slow
def test_training_on_shards_through_a_url_equals_training_on_the_folder_killed_or_not(tmp_path):
    tokenize_to_shards(
        Source("embedded"), load_tokenizer("byte"), tmp_path / "shards", shard_tokens=50_000, progress=False
    )
    local = train(tmp_path, "local", str(tmp_path / "shards"))
    remote = train(tmp_path, "remote", (tmp_path / "shards").as_uri(), kill_at="SIGKILL@step:6")
    assert [r["step"] for r in remote] == [r["step"] for r in local] and len(local) >= 12
    for a, b in zip(local, remote):
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a, b)
    assert list((tmp_path / "cli-cache" / "shards").rglob("*.bin"))  # read through the cache
    assert (tmp_path / "shards" / METADATA).is_file()
