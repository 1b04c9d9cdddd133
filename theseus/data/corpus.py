"""The embedded default corpus, and `read_text_source` to read any source whole.

The default corpus is the Python language reference and library topics that every
CPython install ships as `pydoc_data/topics.py` (about 465k characters of English
prose with code examples): real text, present offline everywhere theseus runs, nothing to download.
"""

from __future__ import annotations

EMBEDDED = "embedded"


def embedded_corpus() -> list[str]:
    """The ~80 documents of `pydoc_data.topics`, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def read_text_source(source: str, text_field: str = "text") -> list[str]:
    """All documents of `source` (see `theseus.data.sources`): `"embedded"`, a text file (one
    document), a JSONL or Parquet file, a folder of such files, or `tfds:NAME`.
    A missing path is a ConfigError."""
    from theseus.data.sources import Source

    return list(Source(source, text_field=text_field).documents())
