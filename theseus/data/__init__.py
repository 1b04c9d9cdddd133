"""Data: tokenizers, text sources and the token-window loader that feeds `model.fit`."""

from theseus.data.corpus import embedded_corpus, read_text_source
from theseus.data.loader import TokenWindows, ValidationWindows, split_tokens
from theseus.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "TokenWindows",
    "ValidationWindows",
    "embedded_corpus",
    "load_tokenizer",
    "read_text_source",
    "split_tokens",
]
