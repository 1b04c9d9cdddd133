"""Tokenizers: bytes by default (no file, no download), or a Hugging Face tokenizer folder.

Both give the same small interface the data pipeline needs: `encode`, `encode_batch`,
`encode_documents` (documents joined by `eos_id`), `decode`, `vocab_size`, `eos_id`,
`dtype` (the smallest unsigned type that holds every id), `name`, `fingerprint` (a
digest of the vocabulary and rules, so that token shards made by one tokenizer are never
read as if made by another) and `encoder` (what a tokenize worker process needs: light
to pickle and to load).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from theseus.config import ConfigError


def token_dtype(vocab_size: int) -> type:
    """uint16 when every id fits, else uint32: half the disk and page cache for most vocabularies."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, and `<|endoftext|>` = 256 between documents.

    Needs no training and no file, and any text round-trips exactly.
    """

    name = "byte"
    fingerprint = "byte"
    eos_id = 256
    vocab_size = 257
    dtype = np.uint16

    @property
    def encoder(self) -> ByteTokenizer:
        return self

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def encode_documents(self, documents: Iterable[str]) -> np.ndarray:
        """All documents as one stream, each followed by `eos_id`."""
        return join_documents(self.encode_batch(list(documents)), self.eos_id, self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (`tokenizer.json` / `tokenizer_config.json`).

    Loaded with `transformers.AutoTokenizer(local_files_only=True)`: never downloads.
    Encoding adds no special tokens (a template's own special tokens in the text still
    count); documents are joined by the tokenizer's EOS token.
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
        self.dtype = token_dtype(self.vocab_size)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        # the fast (Rust) tokenizer alone encodes a batch on all cores, and pickles without transformers
        self.encoder = _FastEncoder(backend, self.eos_id, self.dtype) if backend is not None else self
        rules = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        special = repr(sorted(self.tokenizer.added_tokens_decoder.items(), key=lambda kv: kv[0]))
        self.fingerprint = hashlib.sha256(f"{rules}\n{special}\n{self.eos_id}".encode()).hexdigest()[:16]

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text: the same ids as `tokenizer(texts, add_special_tokens=False)`."""
        if not texts:
            return []
        if self.encoder is not self:
            return self.encoder.encode_batch(texts)
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [np.asarray(i, dtype=self.dtype) for i in ids]

    def encode_documents(self, documents: Iterable[str]) -> np.ndarray:
        return join_documents(self.encode_batch(list(documents)), self.eos_id, self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """The tokenizer's own chat template (`transformers`' `apply_chat_template`)."""
        return self.tokenizer.apply_chat_template(messages, **kwargs)


class _FastEncoder:
    """An `HFTokenizer`'s Rust tokenizer with what encoding documents needs."""

    def __init__(self, backend: Any, eos_id: int, dtype: Any):
        self.backend, self.eos_id, self.dtype = backend, eos_id, dtype
        self.encoder = self

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self.dtype) for e in encodings]


def join_documents(parts: list[np.ndarray], eos_id: int, dtype) -> np.ndarray:
    """One stream: each part followed by `eos_id`."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    out = np.empty(sum(len(p) for p in parts) + len(parts), dtype=dtype)
    at = 0
    for part in parts:
        out[at : at + len(part)] = part
        out[at + len(part)] = eos_id
        at += len(part) + 1
    return out


def load_tokenizer(name: str):
    """`"byte"`, or the path of a folder holding a Hugging Face tokenizer or a keras-hub one
    (`theseus.data.keras_hub`: a `tokenizer.json` that is a Keras config).

    A name that is neither is a ConfigError naming `data/tokenizer`.
    """
    if name == ByteTokenizer.name:
        return ByteTokenizer()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"data/tokenizer: unknown tokenizer {name!r}: use 'byte' or a folder with a Hugging Face tokenizer"
        )
    from theseus.data.keras_hub import KerasHubTokenizer, is_keras_hub_tokenizer

    try:
        return KerasHubTokenizer(path) if is_keras_hub_tokenizer(path) else HFTokenizer(path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data/tokenizer: {error}") from None
