"""Text sources: the embedded default corpus and plain-text files or folders.

The default corpus is the Python language reference and library topics that every
CPython install ships as `pydoc_data/topics.py` (about 465k characters of English
prose with code examples): real text, present offline everywhere theseus runs, nothing to download.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED = "embedded"


def embedded_corpus() -> list[str]:
    """The ~80 documents of `pydoc_data.topics`, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def read_text_source(source: str) -> list[str]:
    """Documents from `"embedded"`, a text file (one document), or a folder of `*.txt` / `*.md`
    files (one document each, sorted by path). A missing path is a FileNotFoundError."""
    if source == EMBEDDED:
        return embedded_corpus()
    path = Path(source).expanduser()
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise FileNotFoundError(f"no .txt or .md files under data source {path}")
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]
    raise FileNotFoundError(f"data source not found: {source}")
