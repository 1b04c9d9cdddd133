"""Data: tokenizers, document sources, token shards, the loaders that feed `model.fit`,
mixtures and supervised fine-tuning examples.

Names are imported on first use, so a tokenize worker (or a script that only tokenizes)
does not pay for Keras.
"""

import importlib

_EXPORTS = {
    "ByteTokenizer": "theseus.data.tokenizers",
    "HFTokenizer": "theseus.data.tokenizers",
    "load_tokenizer": "theseus.data.tokenizers",
    "embedded_corpus": "theseus.data.corpus",
    "read_text_source": "theseus.data.corpus",
    "Source": "theseus.data.sources",
    "TokenShards": "theseus.data.shards",
    "tokenize_to_shards": "theseus.data.tokenize",
    "Permutation": "theseus.data.permutation",
    "PackedWindows": "theseus.data.loader",
    "TokenWindows": "theseus.data.loader",
    "ValidationWindows": "theseus.data.loader",
    "split_tokens": "theseus.data.loader",
    "DataConfig": "theseus.data.config",
    "training_data": "theseus.data.config",
    "ChatDataConfig": "theseus.data.sft",
    "ChatRows": "theseus.data.sft",
    "chat_datasets": "theseus.data.sft",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'theseus.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
