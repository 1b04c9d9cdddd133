"""Document sources: where the text comes from, read as a stream of strings.

A source is one string, as a user writes it in `data/source`:

- `embedded`: the Python docs every install ships (see `corpus.py`);
- a `.txt` / `.md` file (one document) or a `.jsonl` / `.jsonl.gz` file (one document per
  line, its `text_field`), or a `.parquet` file (one document per row of column `text_field`);
- a folder: every such file under it, sorted by path; a folder saved by Hugging Face
  `datasets` (`save_to_disk`) is read as that dataset;
- `tfds:NAME` (`tfds:NAME/CONFIG:VERSION` too): a tensorflow-datasets dataset already
  prepared in `tfds_data_dir`; nothing is downloaded.

Documents always come in the same order, so a tokenize job can skip the ones it has
already written when it resumes. A file or folder may be an fsspec URL (`file://`,
`memory://`, `gs://` with gcsfs, `s3://` with s3fs; `storage.py`); `parts()` is the source
as its files read one after another (what a Ray tokenize job splits). Only the tfds
source needs tensorflow-datasets (and TensorFlow only for datasets not written as
`array_record`); pyarrow only Parquet.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from theseus.config import ConfigError
from theseus.data.corpus import EMBEDDED, embedded_corpus
from theseus.data.storage import RemoteFolder, is_url, open_binary

TFDS_PREFIX = "tfds:"
TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


@dataclass(frozen=True)
class Source:
    """A document source and how to read it.

    Args:
        source: `embedded`, a file or folder, or `tfds:NAME`.
        text_field: the field holding the text in JSONL, Parquet, tfds and `datasets` records.
        split: the split of a tfds dataset or a saved `datasets.DatasetDict`.
        tfds_data_dir: where tfds datasets are prepared ("" = tfds's default folder).
    """

    source: str
    text_field: str = "text"
    split: str = "train"
    tfds_data_dir: str = ""

    def check(self) -> None:
        """Raise ConfigError now if the source cannot be read (before any work starts)."""
        if self.source == EMBEDDED:
            return
        if self.source.startswith(TFDS_PREFIX):
            self._tfds_builder()
            return
        if is_url(self.source):
            remote = RemoteFolder(self.source)
            if remote.is_dir() and not remote.files(suffixes=TEXT_SUFFIXES + RECORD_SUFFIXES):
                raise ConfigError(
                    f"data/source: no {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files under {remote.url}"
                )
            if not remote.is_dir() and not remote.is_file():
                raise ConfigError(f"data/source: data source not found: {self.source}")
            return
        path = Path(self.source).expanduser()
        if path.is_dir():
            if _is_hf_dataset(path):
                return
            if not _files(path):
                raise ConfigError(f"data/source: no {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files under {path}")
        elif not path.is_file():
            raise ConfigError(f"data/source: data source not found: {self.source}")

    def documents(self) -> Iterator[str]:
        """Every document, in a fixed order."""
        self.check()
        if self.source == EMBEDDED:
            yield from embedded_corpus()
            return
        if self.source.startswith(TFDS_PREFIX):
            yield from self._tfds_documents()
            return
        if not is_url(self.source) and _is_hf_dataset(Path(self.source).expanduser()):
            yield from self._hf_documents(Path(self.source).expanduser())
            return
        for part in self.parts():
            yield from part._file_documents(part.source)

    def parts(self) -> list[Source]:
        """This source as sources read one after another: one per file of a folder, else itself."""
        if is_url(self.source):
            remote = RemoteFolder(self.source)
            if not remote.is_dir():
                return [self]
            files = [remote.url_of(name) for name in remote.files(suffixes=TEXT_SUFFIXES + RECORD_SUFFIXES)]
        else:
            path = Path(self.source).expanduser()
            if not path.is_dir() or _is_hf_dataset(path):
                return [self]
            files = [str(file) for file in _files(path)]
        return [dataclasses.replace(self, source=file) for file in files]

    # ------------------------------------------------------------------ files

    def _file_documents(self, path: str) -> Iterator[str]:
        path = path if is_url(path) else Path(path).expanduser()
        name = str(path).lower()
        if name.endswith(".parquet"):
            yield from self._parquet_documents(path)
        elif name.endswith((".jsonl", ".jsonl.gz")):
            for number, record in jsonl_records(path):
                yield self._text(record, f"line {number} of {path}")
        else:
            with open_binary(path) as f:  # universal newlines, as Path.read_text
                yield io.TextIOWrapper(f, encoding="utf-8", errors="replace").read()

    def _parquet_documents(self, path: Path | str) -> Iterator[str]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"data/source: reading {path} needs pyarrow (pip install pyarrow)") from None
        with open_binary(path) as f:
            yield from self._parquet_rows(pq.ParquetFile(f), path)

    def _parquet_rows(self, table: Any, path: Path | str) -> Iterator[str]:
        if self.text_field not in table.schema_arrow.names:
            raise ConfigError(
                f"data/text_field: column {self.text_field!r} not in {path} (its columns: {table.schema_arrow.names})"
            )
        for batch in table.iter_batches(batch_size=1024, columns=[self.text_field]):
            for value in batch.column(0).to_pylist():
                yield self._text({self.text_field: value}, f"a row of {path}")

    def _text(self, record: dict, where: str) -> str:
        if not isinstance(record, dict) or self.text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ConfigError(f"data/text_field: no field {self.text_field!r} in {where} (it has {keys})")
        value = record[self.text_field]
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise ConfigError(
                f"data/text_field: field {self.text_field!r} in {where} is {type(value).__name__}, not text"
            )
        return value

    # ------------------------------------------------------------------ tfds

    def _tfds_builder(self):
        import tensorflow_datasets as tfds

        name = self.source[len(TFDS_PREFIX) :]
        data_dir = self.tfds_data_dir or None
        where = f"data/tfds_data_dir={self.tfds_data_dir}" if data_dir else "tfds's default data_dir"
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            raise ConfigError(
                f"data/tfds_data_dir: folder {self.tfds_data_dir} does not exist (needed by data/source={self.source})"
            )
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
            first = str(error).splitlines()[0]
            raise ConfigError(f"data/source: tfds dataset {name!r} not found in {where}: {first}") from None
        if not builder.is_prepared():
            raise ConfigError(
                f"data/source: tfds dataset {name!r} is not prepared in {where} "
                "(theseus never downloads: prepare it there first)"
            )
        if self.split not in builder.info.splits:
            raise ConfigError(
                f"data/split: tfds dataset {name!r} has no split {self.split!r} (it has {sorted(builder.info.splits)})"
            )
        return builder

    def _tfds_documents(self) -> Iterator[str]:
        import tensorflow_datasets as tfds

        builder = self._tfds_builder()
        where = f"a record of {self.source}"
        if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:  # random access, no TensorFlow
            records = builder.as_data_source(split=self.split)
            for index in range(len(records)):
                yield self._text(records[index], where)
        else:  # tfrecord: only TensorFlow reads it
            dataset = builder.as_dataset(split=self.split, shuffle_files=False)
            for record in tfds.as_numpy(dataset):
                yield self._text(record, where)

    # ------------------------------------------------------------------ Hugging Face datasets

    def _hf_documents(self, path: Path) -> Iterator[str]:
        try:
            import datasets
        except ImportError:
            raise ConfigError(
                f"data/source: {path} is a Hugging Face dataset; reading it needs `pip install datasets`"
            ) from None
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if self.split not in data:
                raise ConfigError(f"data/split: dataset {path} has no split {self.split!r} (it has {sorted(data)})")
            data = data[self.split]
        if self.text_field not in data.column_names:
            raise ConfigError(
                f"data/text_field: column {self.text_field!r} not in {path} (its columns: {data.column_names})"
            )
        column = data.select_columns([self.text_field])
        for start in range(0, len(column), 1024):
            for value in column[start : start + 1024][self.text_field]:
                yield self._text({self.text_field: value}, f"a row of {path}")


def jsonl_records(path: str | Path, what: str = "data/source") -> Iterator[tuple[int, Any]]:
    """`(line number, record)` for each non-blank line of a `.jsonl` or `.jsonl.gz` file.

    A line that is not UTF-8 or not JSON, or a gzip stream that ends early or is damaged,
    is one ConfigError (starting with `what`) naming the file and the line.
    """
    path = path if is_url(path) else Path(path).expanduser()
    number = 0
    with open_binary(path) as f:
        lines = enumerate(f, 1)
        while True:
            try:
                number, raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as error:  # gzip: BadGzipFile is an OSError
                raise ConfigError(f"{what}: cannot read {path} after {number} lines: {error}") from None
            if raw.strip():
                yield number, _json_line(raw, path, number, what)


def _json_line(raw: bytes, path: Path | str, number: int, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{what}: line {number} of {path} is not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})"
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what}: line {number} of {path} is not valid JSON: {error}") from None


def _is_hf_dataset(path: Path) -> bool:
    """A folder written by `datasets`' `save_to_disk` (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _files(folder: Path) -> list[Path]:
    suffixes = TEXT_SUFFIXES + RECORD_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
