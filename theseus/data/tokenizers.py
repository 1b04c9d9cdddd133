"""Tokenizers: bytes by default (no file, no download), or a Hugging Face tokenizer folder.

Both give the same small interface the data pipeline needs: `encode`, `encode_documents`
(documents joined by `eos_id`), `decode`, `vocab_size`, `eos_id`, `name`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

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
        return _join([self.encode(doc) for doc in documents], self.eos_id, np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (`tokenizer.json` / `tokenizer_config.json`).

    Loaded with `transformers.AutoTokenizer(local_files_only=True)`: never downloads.
    Encoding adds no special tokens; documents are joined by the tokenizer's EOS token.
    """

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        self.name = str(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(f"no Hugging Face tokenizer in {path}: {str(error).splitlines()[0]}") from None
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"tokenizer in {path} has no EOS token to separate documents")
        self.eos_id = int(eos)
        self.vocab_size = len(self.tokenizer)
        self.dtype = np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=self.dtype)

    def encode_documents(self, documents: Iterable[str]) -> np.ndarray:
        documents = list(documents)
        ids = self.tokenizer(documents, add_special_tokens=False)["input_ids"] if documents else []
        return _join([np.asarray(i, self.dtype) for i in ids], self.eos_id, self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """The tokenizer's own chat template (`transformers`' `apply_chat_template`)."""
        return self.tokenizer.apply_chat_template(messages, **kwargs)


def _join(parts: list[np.ndarray], eos_id: int, dtype) -> np.ndarray:
    pieces = []
    for part in parts:
        pieces.append(part.astype(dtype))
        pieces.append(np.array([eos_id], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def load_tokenizer(name: str):
    """`"byte"`, or the path of a folder holding a Hugging Face tokenizer."""
    if name == ByteTokenizer.name:
        return ByteTokenizer()
    if Path(name).expanduser().is_dir():
        return HFTokenizer(Path(name).expanduser())
    raise ValueError(f"unknown tokenizer {name!r}: use 'byte' or a folder with a Hugging Face tokenizer")
