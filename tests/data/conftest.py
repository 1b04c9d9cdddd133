"""Data fixtures: a BPE tokenizer folder (session-wide) and a JSONL corpus."""

from __future__ import annotations

import json

import pytest
from data_fixtures import train_bpe

from theseus.data import embedded_corpus


@pytest.fixture(scope="session")
def bpe_folder(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.fixture
def jsonl_corpus(tmp_path):
    """The embedded corpus as a JSONL file with its text in field `body` (465k characters)."""
    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as f:
        for number, document in enumerate(embedded_corpus()):
            f.write(json.dumps({"id": number, "body": document}) + "\n")
    return path
