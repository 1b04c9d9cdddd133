import gzip
import json
import re
import subprocess
import sys
import textwrap

import pytest

from theseus.config import ConfigError
from theseus.data import Source, embedded_corpus, read_text_source
from theseus.data.sft import read_chat_records
from theseus.evaluation.exact_match import ExactMatch
from theseus.evaluation.multiple_choice import MultipleChoice


def test_embedded_corpus_is_real_text_and_stable():
    docs = embedded_corpus()
    assert len(docs) > 50 and sum(map(len, docs)) > 400_000
    assert docs == embedded_corpus()
    assert "def " in "".join(docs)
    assert list(Source("embedded").documents()) == docs


def test_text_files_and_folders(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "skip.bin").write_bytes(b"\0")
    assert read_text_source(str(tmp_path)) == ["first", "second"]
    assert read_text_source(str(tmp_path / "b.txt")) == ["second"]
    with pytest.raises(ConfigError, match="data/source: data source not found"):
        read_text_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="data/source: no .txt, .md, .jsonl, .jsonl.gz, .parquet files under"):
        Source(str(tmp_path / "empty")).check()


def test_jsonl_plain_and_gzipped_read_the_text_field(tmp_path):
    rows = [{"body": "one", "n": 1}, {"body": "two ✓", "n": 2}]
    plain = tmp_path / "a.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "three"}) + "\n")
    assert list(Source(str(plain), text_field="body").documents()) == ["one", "two ✓"]
    assert read_text_source(str(tmp_path), text_field="body") == ["one", "two ✓", "three"]
    with pytest.raises(
        ConfigError, match=r"data/text_field: no field 'text' in line 1 of .*a.jsonl \(it has \['body', 'n'\]\)"
    ):
        list(Source(str(plain)).documents())
    (tmp_path / "bad.jsonl").write_text('{"body": "ok"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 of .*bad.jsonl is not valid JSON"):
        list(Source(str(tmp_path / "bad.jsonl"), text_field="body").documents())


def test_parquet_reads_one_document_per_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i} " * (i % 7) for i in range(2500)]  # more than one record batch
    pq.write_table(pa.table({"body": texts, "n": list(range(2500))}), tmp_path / "t.parquet", row_group_size=700)
    assert list(Source(str(tmp_path / "t.parquet"), text_field="body").documents()) == texts
    with pytest.raises(
        ConfigError, match=r"data/text_field: column 'text' not in .*t.parquet \(its columns: \['body', 'n'\]\)"
    ):
        list(Source(str(tmp_path / "t.parquet")).documents())


def test_hugging_face_datasets_folder(tmp_path):
    import datasets

    single = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
    single.save_to_disk(str(tmp_path / "single"))
    assert list(Source(str(tmp_path / "single")).documents()) == ["a", "b", "c"]
    both = datasets.DatasetDict({"train": single, "test": datasets.Dataset.from_dict({"text": ["z"]})})
    both.save_to_disk(str(tmp_path / "dict"))
    assert list(Source(str(tmp_path / "dict"), split="test").documents()) == ["z"]
    with pytest.raises(
        ConfigError, match=r"data/split: dataset .* has no split 'validation' \(it has \['test', 'train'\]\)"
    ):
        list(Source(str(tmp_path / "dict"), split="validation").documents())


BUILDER = '''
import sys
from pathlib import Path

import tensorflow_datasets as tfds


class LocalNotes(tfds.core.GeneratorBasedBuilder):
    """Text files of a local folder, one example each."""

    VERSION = tfds.core.Version("1.0.0")
    FOLDER = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        files = sorted(Path(self.FOLDER).glob("*.txt"))
        return {"train": self._generate_examples(files[2:]), "validation": self._generate_examples(files[:2])}

    def _generate_examples(self, files):
        for file in files:
            yield file.name, {"text": file.read_text()}


if __name__ == "__main__":
    LocalNotes.FOLDER = sys.argv[1]
    LocalNotes(data_dir=sys.argv[2], file_format="array_record").download_and_prepare()
'''


def build_tfds(tmp_path, documents):
    """Prepare the `local_notes` tfds dataset from `documents` in `tmp_path/tfds`, in another
    process: the reader then knows it only from its files, as a user's trainer would."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for number, document in enumerate(documents):
        (notes / f"{number:04d}.txt").write_text(document)
    (tmp_path / "builder.py").write_text(textwrap.dedent(BUILDER))
    data_dir = tmp_path / "tfds"
    subprocess.run(
        [sys.executable, str(tmp_path / "builder.py"), str(notes), str(data_dir)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return data_dir


def test_tfds_source_reads_a_locally_prepared_dataset(tmp_path):
    documents = [f"note {i}: " + "words " * i for i in range(6)]
    data_dir = build_tfds(tmp_path, documents)
    train = list(Source("tfds:local_notes", tfds_data_dir=str(data_dir)).documents())
    assert sorted(train) == sorted(documents[2:])  # tfds stores examples in its own (fixed) order
    assert train == list(Source("tfds:local_notes", tfds_data_dir=str(data_dir)).documents())
    validation = Source("tfds:local_notes", split="validation", tfds_data_dir=str(data_dir))
    assert sorted(validation.documents()) == sorted(documents[:2])


def test_tfds_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"data/tfds_data_dir: folder {missing} does not exist"):
        Source("tfds:local_notes", tfds_data_dir=str(missing)).check()
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(
        ConfigError,
        match=f"data/source: tfds dataset 'local_notes' not found in data/tfds_data_dir={tmp_path / 'empty'}",
    ):
        Source("tfds:local_notes", tfds_data_dir=str(tmp_path / "empty")).check()
    with pytest.raises(
        ConfigError, match="data/source: tfds dataset 'mnist' is not prepared in .*theseus never downloads"
    ):
        Source("tfds:mnist", tfds_data_dir=str(tmp_path / "empty")).check()


@pytest.mark.slow
def test_training_reads_a_tfds_dataset_built_from_local_files(tmp_path):
    from theseus.experiments import runs

    data_dir = build_tfds(tmp_path, embedded_corpus())
    overrides = {
        "data/source": "tfds:local_notes",
        "data/tfds_data_dir": str(data_dir),
        "architecture/n_layer": 1,
        "architecture/n_embd": 64,
        "architecture/n_head": 2,
        "architecture/block_size": 64,
        "training/batch_size": 16,
        "training/tokens": 16 * 64 * 40,
        "logging/validation_interval": 20,
        "logging/validation_batches": 4,
        "logging/progress_bar": False,
        "logging/plot": False,
        "topology/devices": 1,
    }
    fields, values = runs.configure("gpt/train/pretrain", overrides, require=True)
    job = runs.job_class("gpt/train/pretrain")(values, tmp_path / "run")
    runs.prepare_run_dir(tmp_path / "run", "gpt/train/pretrain", fields, values)
    result = job.run()
    assert sum(len(t) for t in job.datasets(0).train.sources[0].shards) > 300_000  # the tfds text, not a stand-in
    assert result["val_loss"] < 0.7 * result["initial_val_loss"], result


JSONL_READERS = {  # a reader of JSONL files, and a line it accepts
    "source": (lambda path: list(Source(path).documents()), {"text": "a"}),
    "chat": (read_chat_records, {"prompt": "a", "response": "b"}),
    "multiple_choice": (MultipleChoice, {"context": "a", "choices": ["b", "c"], "gold": 0}),
    "exact_match": (ExactMatch, {"prompt": "a", "answer": "b"}),
}


@pytest.mark.parametrize("reader", JSONL_READERS)
def test_every_jsonl_reader_names_the_file_and_line_of_a_line_it_cannot_read(tmp_path, reader):
    read, good = JSONL_READERS[reader]
    path = tmp_path / "data.jsonl"
    for bad, message in [
        (b"{not json", "is not valid JSON"),
        (b'{"text": "caf\xe9"}', r"is not UTF-8 text \(byte 0xe9"),
    ]:
        path.write_bytes(json.dumps(good).encode() + b"\n" + bad + b"\n")
        with pytest.raises(ConfigError, match=rf"line 2 of {re.escape(str(path))} {message}") as error:
            read(str(path))
        assert "\n" not in str(error.value)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(json.dumps({**good, "n": i}).encode() + b"\n" for i in range(5000)))[:-200])
    with pytest.raises(ConfigError, match=rf"cannot read {re.escape(str(cut))} after \d+ lines: "):
        read(str(cut))
