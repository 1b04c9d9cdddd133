"""Tokenizers: bytes by default, so a job needs no vocabulary file and no download."""

from __future__ import annotations

from typing import Iterable

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, and `<|endoftext|>` = 256 between documents.

    Needs no training and no file, and any text round-trips exactly.
    """

    name = "byte"
    eos_id = 256
    vocab_size = 257

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def encode_documents(self, documents: Iterable[str]) -> np.ndarray:
        """All documents as one stream, each followed by `eos_id`."""
        parts = []
        for doc in documents:
            parts.append(self.encode(doc))
            parts.append(np.array([self.eos_id], dtype=np.uint16))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")


TOKENIZERS = {"byte": ByteTokenizer}


def load_tokenizer(name: str):
    """A tokenizer by name (`"byte"`); unknown names are a ValueError listing the known ones."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]()
