"""keras-hub tokenizers behind theseus's tokenizer interface: `KerasHubTokenizer`.

A keras-hub preset folder holds its tokenizer as `tokenizer.json` (the Keras config) and
`assets/tokenizer/` (vocabulary, merges, SentencePiece proto); a Hugging Face folder that
keras-hub converts holds it as Hugging Face files. Either is read with keras-hub's own
loaders, locally (nothing is downloaded), and gives `encode`, `encode_batch`,
`encode_documents`, `decode`, `vocab_size`, `eos_id`, `dtype`, `name`, `fingerprint` and
`encoder` as `theseus.data.tokenizers` documents them. Ids are keras-hub's: the preset's own
tokenizer feeds the data exactly as keras-hub's preprocessors would tokenize it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from theseus.data.tokenizers import join_documents, token_dtype

TOKENIZER_CONFIG = "tokenizer.json"


def is_keras_hub_tokenizer(folder: str | Path) -> bool:
    """Whether `folder` holds a keras-hub tokenizer (a `tokenizer.json` that is a Keras config)."""
    path = Path(folder).expanduser() / TOKENIZER_CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "class_name" in config and "config" in config


class KerasHubTokenizer:
    """The keras-hub tokenizer of a local preset folder (or Hugging Face folder keras-hub converts).

    Encoding adds no start or end token; documents are joined by the tokenizer's end token.

    Args:
        folder: the preset folder, or a folder holding just a tokenizer saved with
            `tokenizer.save_to_preset(folder)`.

    Example:
        >>> tokenizer = KerasHubTokenizer("presets/gemma_tiny")
        >>> tokenizer.encode("hello")  # np.ndarray of keras-hub's ids
    """

    def __init__(self, folder: str | Path) -> None:
        self.name = str(folder)
        self.tokenizer = load_keras_hub_tokenizer(Path(folder).expanduser())
        eos = getattr(self.tokenizer, "end_token_id", None)
        if eos is None:
            raise ValueError(f"the keras-hub tokenizer in {folder} has no end token to separate documents")
        self.eos_id = int(eos)
        self.vocab_size = int(self.tokenizer.vocabulary_size())
        self.dtype = token_dtype(self.vocab_size)
        rules = json.dumps(self.tokenizer.get_config(), sort_keys=True, default=str)
        vocabulary = repr(self.tokenizer.get_vocabulary())
        merges = repr(getattr(self.tokenizer, "merges", None))
        digest = hashlib.sha256(f"{type(self.tokenizer).__name__}\n{rules}\n{vocabulary}\n{merges}".encode())
        self.fingerprint = digest.hexdigest()[:16]

    @property
    def encoder(self) -> KerasHubTokenizer:
        return self

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """keras-hub's ids for each text (its tokenizer called on the batch, a ragged result)."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts))
        rows = ids.to_list() if hasattr(ids, "to_list") else [list(np.asarray(row)) for row in ids]
        return [np.asarray(row, dtype=self.dtype) for row in rows]

    def encode_documents(self, documents: Iterable[str]) -> np.ndarray:
        return join_documents(self.encode_batch(list(documents)), self.eos_id, self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; an id past the tokenizer's vocabulary (a model's vocabulary is often
        padded beyond it, and an untrained one samples there) has none, as with Hugging Face's
        tokenizers, where keras-hub's own detokenizers would fail on it."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if not ids:
            return ""
        text = self.tokenizer.detokenize(np.asarray(ids, dtype="int32"))
        text = text.numpy() if hasattr(text, "numpy") else text
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def load_keras_hub_tokenizer(folder: Path) -> Any:
    """keras-hub's tokenizer in `folder`: from its `tokenizer.json` and assets when it has them
    (a preset, or a tokenizer saved alone), else `Tokenizer.from_preset` (a Hugging Face folder)."""
    import keras
    import keras_hub

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    try:
        if not is_keras_hub_tokenizer(folder):
            return keras_hub.tokenizers.Tokenizer.from_preset(str(folder))
        tokenizer = keras.saving.deserialize_keras_object(json.loads((folder / TOKENIZER_CONFIG).read_text()))
        tokenizer.load_preset_assets(str(folder))
        return tokenizer
    except (OSError, TypeError, ValueError, KeyError) as error:
        raise FileNotFoundError(f"no keras-hub tokenizer in {folder}: {str(error).splitlines()[0]}") from None
