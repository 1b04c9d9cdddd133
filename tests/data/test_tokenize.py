"""The tokenize job: shards equal to the tokenizer's own batch encode, on every core,
resumable after a kill, refusing to mix tokenizers; then training on its shards."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from transformers import AutoTokenizer

from theseus.config import ConfigError, parse_overrides
from theseus.data import Source, TokenShards, load_tokenizer, tokenize_to_shards
from theseus.data.shards import METADATA, PROGRESS
from theseus.data.tokenize import is_validation
from theseus.experiments import runs
from theseus.experiments.data import Tokenize


def expected_streams(documents, folder, fraction):
    """Train and validation streams from the tokenizer's own batch encode."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    held_out = is_validation(np.arange(len(documents)), fraction)
    eos = tokenizer.eos_token_id
    train = [t for i, v in zip(ids, held_out) if not v for t in i + [eos]]
    validation = [t for i, v in zip(ids, held_out) if v for t in i + [eos]]
    return np.array(train), np.array(validation), int(held_out.sum())


def read_split(folder, split):
    return np.concatenate(TokenShards(folder).split(split))


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.bin"))}


def test_shards_hold_the_tokenizers_own_batch_encode_on_all_cores(bpe_folder, jsonl_corpus, tmp_path):
    source = Source(str(jsonl_corpus), text_field="body")
    documents = list(source.documents())
    tokenizer = load_tokenizer(str(bpe_folder))
    parallel = tokenize_to_shards(
        source, tokenizer, tmp_path / "two", validation_fraction=0.1, shard_tokens=60_000, workers=2, progress=False
    )
    train, validation, n_validation = expected_streams(documents, bpe_folder, 0.1)
    shards = TokenShards(tmp_path / "two")
    assert shards.dtype == np.uint16 and shards.tokenizer["fingerprint"] == tokenizer.fingerprint
    np.testing.assert_array_equal(read_split(tmp_path / "two", "train"), train)
    np.testing.assert_array_equal(read_split(tmp_path / "two", "validation"), validation)
    assert n_validation == len(documents) // 10
    assert parallel["documents"] == len(documents) and parallel["train_tokens"] == len(train)
    assert len(shards.metadata["splits"]["train"]["shards"]) >= 3
    assert not (tmp_path / "two" / PROGRESS).exists()
    in_process = tokenize_to_shards(
        source, tokenizer, tmp_path / "one", validation_fraction=0.1, shard_tokens=60_000, workers=1, progress=False
    )
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    assert in_process["fingerprint"] == parallel["fingerprint"]


def test_a_finished_folder_is_kept_and_another_tokenizer_is_refused(bpe_folder, tmp_path):
    source = Source("embedded")
    tokenize_to_shards(source, load_tokenizer("byte"), tmp_path, workers=1, progress=False)
    before = folder_bytes(tmp_path)
    again = tokenize_to_shards(source, load_tokenizer("byte"), tmp_path, workers=1, progress=False)
    assert (
        folder_bytes(tmp_path) == before
        and again["train_tokens"] == sum(len(d.encode()) + 1 for d in source.documents()) - again["validation_tokens"]
    )
    with pytest.raises(ConfigError, match="holds shards from tokenizer 'byte' .* shards of two tokenizers never mix"):
        tokenize_to_shards(source, load_tokenizer(str(bpe_folder)), tmp_path, workers=1, progress=False)


def tokenize_values(**overrides):
    fields, values = runs.configure("data/tokenize", overrides, require=True)
    return values


def test_bad_input_is_one_config_error_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    cases = [
        ({"data/source": str(tmp_path / "missing.jsonl")}, "data/source: data source not found"),
        ({"data/tokenizer": "gpt-77"}, "data/tokenizer: unknown tokenizer 'gpt-77'"),
        ({"data/validation_fraction": 1.0}, r"data/validation_fraction must be in \[0, 1\)"),
        (
            {"data/source": "tfds:local_notes", "data/tfds_data_dir": str(tmp_path / "no")},
            "data/tfds_data_dir: folder .* does not exist",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            Tokenize(tokenize_values(**overrides), run_dir)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / METADATA).write_text("{}")
    with pytest.raises(ConfigError, match="is already token shards"):
        Tokenize(tokenize_values(**{"data/source": str(tmp_path / "shards")}), run_dir)
    assert not run_dir.exists()


DYING_CLI = """
import os, signal, sys
from theseus.data import shards

append, calls = shards.ShardWriter.append, [0]

def append_then_die(self, ids):
    append(self, ids)
    calls[0] += 1
    if calls[0] == int(os.environ["DIE_AFTER_APPENDS"]):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a pre-empted host would

if __name__ == "__main__":  # the job's worker processes import this file too
    shards.ShardWriter.append = append_then_die
    from theseus.cli import main

    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_job_resumes_to_exactly_the_shards_of_an_uninterrupted_one(
    bpe_folder, jsonl_corpus, tmp_path, theseus_cli
):
    config = tmp_path / "tok.yaml"
    settings = [
        f"data.source={jsonl_corpus}",
        "data.text_field=body",
        f"data.tokenizer={bpe_folder}",
        "tokenize.shard_tokens=10000",
        "tokenize.workers=2",
        "logging.progress_bar=false",
    ]
    fields, values = runs.configure("data/tokenize", parse_overrides(settings), require=True)
    config.write_text(runs.config_text("data/tokenize", fields, values))
    (tmp_path / "dying.py").write_text(textwrap.dedent(DYING_CLI))
    killed = subprocess.run(
        [sys.executable, str(tmp_path / "dying.py"), "run", "tok", str(config), str(tmp_path / "out")],
        env={**os.environ, "DIE_AFTER_APPENDS": "41"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    folder = tmp_path / "out" / "tok"
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (folder / PROGRESS).is_file() and not (folder / METADATA).exists()
    assert list(folder.rglob(".*.bin.tmp"))  # the shard being written, never under a final name
    done_before = json.loads((folder / PROGRESS).read_text())["documents"]
    assert 0 < done_before < 79
    with pytest.raises(ConfigError, match="are incomplete .* run the data/tokenize job again"):
        TokenShards(folder)
    with pytest.raises(ConfigError, match="shards of two tokenizers never mix"):
        tokenize_to_shards(Source(str(jsonl_corpus), text_field="body"), load_tokenizer("byte"), folder, progress=False)

    resumed = theseus_cli("run", "tok", config, tmp_path / "out", check=True)
    assert f"resuming the tokenization in {folder} after {done_before:,} documents" in resumed.stdout
    reference = tmp_path / "reference"
    tokenize_to_shards(
        Source(str(jsonl_corpus), text_field="body"),
        load_tokenizer(str(bpe_folder)),
        reference,
        shard_tokens=10000,
        workers=1,
        progress=False,
    )
    assert folder_bytes(folder) == folder_bytes(reference)
    assert TokenShards(folder).metadata == TokenShards(reference).metadata
    assert not list(folder.rglob(".*.tmp"))


@pytest.mark.slow
def test_tokenize_then_train_on_the_shards_and_the_loss_falls(bpe_folder, jsonl_corpus, tmp_path, recipe):
    recipe(
        "data/tokenize",
        f"--data.source={jsonl_corpus}",
        "--data.text_field=body",
        f"--data.tokenizer={bpe_folder}",
        "--logging.progress_bar=false",
        "--out",
        tmp_path,
        "--name",
        "tok",
        check=True,
    )
    shards = tmp_path / "tok"
    assert TokenShards(shards).tokens("train") > 250_000
    overrides = {
        "data/source": str(shards),
        "data/tokenizer": str(bpe_folder),
        "architecture/vocab_size": 320,
        "architecture/n_layer": 1,
        "architecture/n_embd": 64,
        "architecture/n_head": 2,
        "architecture/block_size": 64,
        "training/batch_size": 16,
        "training/tokens": 16 * 64 * 50,
        "logging/validation_interval": 25,
        "logging/validation_batches": 4,
        "logging/progress_bar": False,
        "logging/plot": False,
        "topology/devices": 1,
    }
    fields, values = runs.configure("gpt/train/pretrain", overrides, require=True)
    job = runs.job_class("gpt/train/pretrain")(values, tmp_path / "train")
    runs.prepare_run_dir(tmp_path / "train", "gpt/train/pretrain", fields, values)
    result = job.run()
    assert result["val_loss"] < 0.8 * result["initial_val_loss"], result
