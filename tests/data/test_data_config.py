"""`data/...` keys -> token streams -> loaders, as the trainer uses them: shard folders and
text sources, mixtures, exact resume, and the errors a user meets."""

import json
from pathlib import Path

import numpy as np
import pytest

from theseus.config import ConfigError, collect
from theseus.data import Source, TokenWindows, embedded_corpus, load_tokenizer, tokenize_to_shards, training_data
from theseus.data.config import DataConfig
from theseus.experiments import runs
from theseus.experiments.data import TokenizeConfig
from theseus.training import BaseTrainerConfig
from theseus.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shard_folders(tmp_path_factory):
    """Byte-level shards of two different sources."""
    root = tmp_path_factory.mktemp("shards")
    tokenizer = load_tokenizer("byte")
    tokenize_to_shards(Source("embedded"), tokenizer, root / "docs", shard_tokens=50_000, workers=1, progress=False)
    code = root / "code.txt"
    code.write_text("".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(3000)))
    tokenize_to_shards(Source(str(code)), tokenizer, root / "code", validation_fraction=0.0, workers=1, progress=False)
    return root


def test_the_data_keys_are_one_set_for_training_and_tokenizing():
    table = collect([BaseTrainerConfig, TokenizeConfig])  # raises if a shared key's type or default differed
    data_keys = {k for k in table if k.startswith("data/")}
    assert data_keys == {
        "data/source",
        "data/text_field",
        "data/split",
        "data/tfds_data_dir",
        "data/tokenizer",
        "data/validation_fraction",
        "data/mixture",
    }
    assert all(table[k].help for k in data_keys)


def test_mixture_entries_from_the_command_line_and_their_errors():
    fields, values = runs.configure(
        "gpt/train/pretrain", {"data/mixture": "[{source: a, weight: 0.7}, {source: b, weight: 3}]"}
    )
    assert DataConfig(mixture=values["data/mixture"]).entries() == [("a", 0.7), ("b", 3.0)]
    assert DataConfig(source="x").entries() == [("x", 1.0)]
    cases = [
        ([{"source": "a"}], r"data/mixture\[0\] must have exactly the keys source and weight, got \['source'\]"),
        (
            [{"source": "a", "weight": 1}, {"source": "b", "weight": 0}],
            r"data/mixture\[1\].weight must be a number > 0, got 0",
        ),
        ([{"source": "a", "weight": 1, "wieght": 2}], r"data/mixture\[0\] must have exactly the keys"),
        ([{"source": 3, "weight": 1}], r"data/mixture\[0\].source must be a string"),
    ]
    for mixture, message in cases:
        with pytest.raises(ConfigError, match=message):
            DataConfig(mixture=mixture).entries()
    with pytest.raises(ConfigError, match="config key 'data/mixture' must be"):
        runs.configure("gpt/train/pretrain", {"data/mixture": "{source: a}"})


def test_loaders_on_shards_repeat_and_resume_exactly(shard_folders):
    config = DataConfig(
        mixture=[
            {"source": str(shard_folders / "docs"), "weight": 0.7},
            {"source": str(shard_folders / "code"), "weight": 0.3},
        ]
    )
    data = training_data(config, load_tokenizer("byte"), block_size=64)
    assert all(isinstance(a, np.memmap) for a in data.train[0] + data.train[1])

    def loader(start_step=0, steps=50, seed=0):
        again = training_data(config, load_tokenizer("byte"), block_size=64)  # as a restarted process would
        return TokenWindows(again.train, 64, 8, steps, seed, start_step, weights=again.weights)

    a, b = loader(), loader()
    restored = loader(start_step=31, steps=19)  # the saved position is the step
    batches = [a[i] for i in range(50)]
    for i in range(50):
        np.testing.assert_array_equal(b[i][0], batches[i][0])
    for i in range(19):
        np.testing.assert_array_equal(restored[i][0], batches[31 + i][0])
        np.testing.assert_array_equal(restored[i][1], batches[31 + i][1])
    assert not np.array_equal(loader(seed=1)[0][0], batches[0][0])
    # 'def f' marks the code source's windows: about 30% of them
    code_rows = sum(("def f" in bytes(row.astype(np.uint8)).decode("latin-1")) for x, _ in batches for row in x)
    assert abs(code_rows / 400 - 0.3) < 0.02
    assert data.fingerprint == training_data(config, load_tokenizer("byte"), 64).fingerprint


def test_a_text_source_is_tokenized_whole_and_split_at_a_window_boundary():
    byte = load_tokenizer("byte")
    data = training_data(DataConfig(source="embedded", validation_fraction=0.1), byte, 64)
    stream = byte.encode_documents(embedded_corpus())
    windows = len(stream) // 65
    np.testing.assert_array_equal(np.concatenate([data.train[0], data.validation[0]]), stream[: windows * 65])
    assert len(data.validation[0]) == round(windows * 0.1) * 65
    other = training_data(DataConfig(source="embedded", validation_fraction=0.2), byte, 64)
    assert other.fingerprint != data.fingerprint


def pretrain_job(run_dir=None, **overrides):
    tiny = {
        "architecture/n_layer": 1,
        "architecture/n_embd": 32,
        "architecture/n_head": 2,
        "architecture/block_size": 32,
        "training/batch_size": 4,
        "training/tokens": 4 * 32 * 10,
        "logging/validation_batches": 2,
        "topology/devices": 1,
    }
    fields, values = runs.configure("gpt/train/pretrain", {**tiny, **overrides}, require=True)
    return runs.job_class("gpt/train/pretrain")(values, run_dir)


def test_the_trainer_reads_a_mixture_of_shards_and_text(shard_folders, tmp_path):
    (tmp_path / "notes.txt").write_text("some notes on nothing in particular. " * 400)
    job = pretrain_job(
        **{
            "data/mixture": [
                {"source": str(shard_folders / "docs"), "weight": 1},
                {"source": str(tmp_path / "notes.txt"), "weight": 1},
            ]
        }
    )
    batches = job.datasets(0)
    train, validation = batches.train, batches.validation
    assert len(train) == 10 and train.weights == [1.0, 1.0]
    x, y = train[0]
    assert x.shape == (4, 32) and y.shape == (4, 32)
    assert len(validation) == 2


def test_the_trainer_refuses_shards_of_another_tokenizer_a_small_vocabulary_and_changed_data(
    shard_folders, bpe_folder, tmp_path
):
    with pytest.raises(ConfigError, match="data/tokenizer: token shards in .*docs were made with tokenizer 'byte'"):
        pretrain_job(
            **{
                "data/source": str(shard_folders / "docs"),
                "data/tokenizer": str(bpe_folder),
                "architecture/vocab_size": 400,
            }
        ).datasets(0)
    with pytest.raises(
        ConfigError, match=r"architecture/vocab_size=200 is smaller than the 257 tokens of data/tokenizer byte"
    ):
        pretrain_job(**{"architecture/vocab_size": 200}).datasets(0)
    with pytest.raises(ConfigError, match=r"data: .*validation windows of \d+ tokens: nothing to validate on"):
        pretrain_job(**{"data/source": str(shard_folders / "code")}).datasets(0)  # tokenized with no validation share

    # a checkpoint written on other tokens: resuming would not continue its batches
    state = ckpt.step_dir(tmp_path / "checkpoints", 4) / ckpt.STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"step": 4, "data": "0123456789abcdef"}))
    with pytest.raises(ConfigError, match="data: the tokens differ from those of the checkpoint at step 4"):
        pretrain_job(tmp_path).datasets(4)
    fingerprint = pretrain_job(tmp_path).datasets(0).fingerprint  # from step 0 no checkpoint is compared
    state.write_text(json.dumps({"step": 4, "data": fingerprint}))
    assert len(pretrain_job(tmp_path).datasets(4).train) == 6


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_the_data_recipes_validate(recipe):
    key, fields, values = runs.read_config(recipe)
    assert key in ("data/tokenize", "gpt/train/pretrain")
    DataConfig(mixture=values.get("data/mixture", [])).entries()
