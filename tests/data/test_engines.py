"""The tokenize engines: Ray actors make byte for byte the shards of the local engine, and a
Ray job killed mid-way resumes without encoding its finished shards again. One local Ray
cluster (2 CPUs, 127.0.0.1, no dashboard) serves the whole module: its start-up is slow."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import ray  # the test extra's: never skipped

from theseus.config import ConfigError, parse_overrides
from theseus.data import Source, TokenShards, embedded_corpus, load_tokenizer, tokenize_to_shards
from theseus.data.engines import _chunks, chunk_sizes
from theseus.data.shards import METADATA, PROGRESS
from theseus.experiments import runs
from theseus.experiments.data import Tokenize


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for the module; its address, for drivers in other processes."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    """The embedded corpus as three JSONL files of a folder (field `body`): a source of three parts."""
    folder = tmp_path_factory.mktemp("corpus")
    documents = embedded_corpus()
    for part in range(3):
        with open(folder / f"part-{part}.jsonl", "w") as f:
            for document in documents[part * 27 : (part + 1) * 27]:
                f.write(json.dumps({"body": document}) + "\n")
    return folder


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.bin"))}


def test_chunk_sizes_cut_where_the_local_reader_cuts():
    documents = ["x" * n for n in [5, 900, 3, 3000, 1, 1, 1, 700, 299, 12]]
    for chars in (1, 300, 1000, 10**6):
        expected = [(len(chunk), sum(map(len, chunk))) for _, chunk in _chunks(documents, 0, chars)]
        assert chunk_sizes([len(d) for d in documents], chars) == expected


def test_ray_shards_are_byte_identical_to_the_local_engines(ray_cluster, bpe_folder, corpus_folder, tmp_path, capsys):
    source = Source(str(corpus_folder), text_field="body")
    assert len(source.parts()) == 3
    tokenizer = load_tokenizer(str(bpe_folder))
    settings = {"validation_fraction": 0.1, "shard_tokens": 20_000, "progress": True}
    local = tokenize_to_shards(source, tokenizer, tmp_path / "local", workers=1, **settings)
    bar = capsys.readouterr().err
    assert "tokenize (local)" in bar and "tok/s" in bar and "documents=79]" in bar
    on_ray = tokenize_to_shards(source, tokenizer, tmp_path / "ray", workers=2, engine="ray", **settings)
    bar = capsys.readouterr().err
    assert "tokenize (ray)" in bar and "tok/s" in bar and "documents=79 of 79]" in bar
    assert len(folder_bytes(tmp_path / "ray")) >= 8
    assert folder_bytes(tmp_path / "ray") == folder_bytes(tmp_path / "local")
    assert TokenShards(tmp_path / "ray").metadata == TokenShards(tmp_path / "local").metadata
    assert on_ray["documents"] == local["documents"] == 79 and on_ray["fingerprint"] == local["fingerprint"]
    held_out = TokenShards(tmp_path / "ray").metadata["splits"]["validation"]["documents"]
    assert held_out == 7  # floor(79 x 0.1), the same documents: the bytes above are equal


def test_a_bad_line_read_by_an_actor_is_one_config_error(ray_cluster, corpus_folder, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for part in sorted(corpus_folder.iterdir()):
        (folder / part.name).write_bytes(part.read_bytes())
    (folder / "part-9.jsonl").write_text('{"body": "fine"}\n{"body": \n')
    with pytest.raises(ConfigError, match=r"^data/source: line 2 of .*part-9.jsonl is not valid JSON"):
        tokenize_to_shards(
            Source(str(folder), text_field="body"), load_tokenizer("byte"), tmp_path / "out", engine="ray"
        )
    assert not (tmp_path / "out" / METADATA).exists()


def test_an_unknown_engine_is_one_config_error(tmp_path):
    fields, values = runs.configure("data/tokenize", {"tokenize/engine": "beam"}, require=True)
    with pytest.raises(ConfigError, match="tokenize/engine must be one of local, ray, got 'beam'"):
        Tokenize(values, tmp_path / "run")
    assert not (tmp_path / "run").exists()


DYING_CLI = """
import os, signal, sys
from theseus.data import shards

append, calls = shards.ShardWriter.append, [0]

def append_then_die(self, ids):
    append(self, ids)
    calls[0] += 1
    if calls[0] == int(os.environ["DIE_AFTER_APPENDS"]):
        os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    shards.ShardWriter.append = append_then_die
    from theseus.cli import main

    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_ray_job_resumes_without_encoding_its_finished_shards_again(
    ray_cluster, corpus_folder, tmp_path, capsys
):
    settings = [
        f"data.source={corpus_folder}",
        "data.text_field=body",
        "tokenize.shard_tokens=20000",
        "tokenize.engine=ray",
        "tokenize.workers=2",
        "logging.progress_bar=false",
    ]
    config = tmp_path / "tok.yaml"
    fields, values = runs.configure("data/tokenize", parse_overrides(settings), require=True)
    config.write_text(runs.config_text("data/tokenize", fields, values))
    (tmp_path / "dying.py").write_text(textwrap.dedent(DYING_CLI))
    killed = subprocess.run(  # a driver of the module's cluster, killed after 17 of 28 appends
        [sys.executable, str(tmp_path / "dying.py"), "run", "tok", str(config), str(tmp_path / "out")],
        env={**os.environ, "DIE_AFTER_APPENDS": "17", "RAY_ADDRESS": ray_cluster},
        capture_output=True,
        text=True,
        timeout=300,
    )
    folder = tmp_path / "out" / "tok"
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (folder / PROGRESS).is_file() and not (folder / METADATA).exists()
    progress = json.loads((folder / PROGRESS).read_text())
    finished = {s["file"]: s for split in progress["splits"].values() for s in split["shards"]}
    assert 0 < progress["documents"] < 79 and finished
    before = {name: (folder / name).stat() for name in finished}

    source = Source(str(corpus_folder), text_field="body")
    resumed = tokenize_to_shards(
        source, load_tokenizer("byte"), folder, shard_tokens=20_000, workers=2, engine="ray", progress=False
    )
    assert f"resuming the tokenization in {folder} after {progress['documents']:,} documents" in capsys.readouterr().out
    for name, stat in before.items():  # the finished shards were kept, not written again
        assert (folder / name).stat().st_mtime_ns == stat.st_mtime_ns and (folder / name).stat().st_ino == stat.st_ino
    done = sum(s["tokens"] for s in finished.values())
    assert resumed["tokens_encoded"] == resumed["train_tokens"] + resumed["validation_tokens"] - done
    reference = tokenize_to_shards(
        source, load_tokenizer("byte"), tmp_path / "ref", shard_tokens=20_000, progress=False
    )
    assert folder_bytes(folder) == folder_bytes(tmp_path / "ref")
    assert TokenShards(folder).metadata == TokenShards(tmp_path / "ref").metadata
    assert reference["tokens_encoded"] == resumed["train_tokens"] + resumed["validation_tokens"]
    np.testing.assert_array_equal(
        TokenShards(folder).split("train")[0], TokenShards(tmp_path / "ref").split("train")[0]
    )
