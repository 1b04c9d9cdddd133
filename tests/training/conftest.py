"""Fixtures the training tests share."""

import pytest


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A few kB of English prose (Python's own help topics): a training text with no download."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(topics[k] for k in sorted(topics)[:3])[:6000])
    return path
