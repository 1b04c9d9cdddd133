"""The `data/...` config keys, and from them the token streams a trainer feeds its loaders.

data:
  source: runs/tok-web            # or: embedded, a file/folder, tfds:NAME
  tokenizer: tokenizers/bpe-32k   # 'byte' or a Hugging Face tokenizer folder
  mixture:                        # optional; replaces `source`
    - {source: runs/tok-web, weight: 0.7}
    - {source: runs/tok-code, weight: 0.3}
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from theseus.config import ConfigError, field
from theseus.data.loader import split_tokens
from theseus.data.shards import TokenShards, is_shard_folder
from theseus.data.sources import Source


@dataclasses.dataclass
class SourceConfig:
    """One document source and its tokenizer: what `data/tokenize` and training both read."""

    source: str = field(
        "data/source",
        default="embedded",
        help="'embedded' (Python's docs), a .txt/.md/.jsonl/.parquet file or folder, tfds:NAME, "
        "or a token-shard folder made by data/tokenize",
    )
    text_field: str = field(
        "data/text_field",
        default="text",
        help="the field holding the text in JSONL, Parquet, tfds and datasets records",
    )
    split: str = field(
        "data/split", default="train", help="the split read from a tfds dataset or a saved Hugging Face DatasetDict"
    )
    tfds_data_dir: str = field(
        "data/tfds_data_dir",
        default="",
        help="where tfds:NAME is already prepared ('' = tfds's default); nothing is downloaded",
    )
    tokenizer: str = field(
        "data/tokenizer",
        default="byte",
        help="'byte' or a Hugging Face tokenizer folder; token shards must have been made with it",
    )
    validation_fraction: float = field(
        "data/validation_fraction",
        default=0.05,
        bounds="[0, 1)",
        help="share held out for validation: of windows of a text source, of documents in data/tokenize",
    )

    def reader(self, source: str | None = None) -> Source:
        """How to read `source` (default: `data/source`) with these settings."""
        return Source(source or self.source, self.text_field, self.split, self.tfds_data_dir)


@dataclasses.dataclass
class DataConfig(SourceConfig):
    """Training data: one source, or a weighted mixture of several."""

    mixture: list[dict] = field(
        "data/mixture",
        default_factory=list,
        help="[{source: ..., weight: 0.7}, ...]: sources (text or token shards) mixed by weight; replaces data/source",
    )

    def entries(self) -> list[tuple[str, float]]:
        """(source, weight) pairs: the mixture, or `data/source` alone."""
        if not self.mixture:
            return [(self.source, 1.0)]
        entries = []
        for i, entry in enumerate(self.mixture):
            where = f"data/mixture[{i}]"
            if set(entry) != {"source", "weight"}:
                raise ConfigError(f"{where} must have exactly the keys source and weight, got {sorted(entry)}")
            weight = entry["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ConfigError(f"{where}.weight must be a number > 0, got {weight!r}")
            if not isinstance(entry["source"], str):
                raise ConfigError(f"{where}.source must be a string, got {entry['source']!r}")
            entries.append((entry["source"], float(weight)))
        return entries

    def check_sources(self) -> None:
        """A ConfigError now for a source that cannot be read (missing, empty, a damaged token
        shard, a bad mixture entry), before a job writes anything. (A shard's checksum is
        computed here once and cached: opening the shards later checks only their sizes.)"""
        for source, _ in self.entries():
            if is_shard_folder(source):
                TokenShards(source).verify()
            else:
                self.reader(source).check()


@dataclasses.dataclass
class TrainingData:
    """Token streams for `TokenWindows` / `ValidationWindows` (one per source) and their weights.

    `fingerprint` identifies the tokens (shard metadata, or a digest of the text's tokens),
    so that a checkpoint can tell whether it is resumed on the same data.
    """

    train: list[Any]
    validation: list[Any]
    weights: list[float]
    fingerprint: str


def training_data(config: DataConfig, tokenizer: Any, block_size: int) -> TrainingData:
    """Open every source of `config`: shard folders memory-mapped (their tokenizer checked),
    text sources tokenized here and split at a window boundary."""
    train, validation, weights, identities = [], [], [], []
    for source, weight in config.entries():
        if is_shard_folder(source):
            shards = TokenShards(source)
            shards.check_tokenizer(tokenizer)
            train.append(shards.split("train"))
            validation.append(shards.split("validation"))
            identities.append(shards.fingerprint)
        else:
            tokens = tokenizer.encode_documents(config.reader(source).documents())
            try:
                part_train, part_validation = split_tokens(tokens, config.validation_fraction, block_size)
            except ValueError as error:
                raise ConfigError(f"data/source {source}: {error}") from None
            train.append(part_train)
            validation.append(part_validation)
            identities.append(hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest()[:16])
        weights.append(weight)
    key = repr([(i, w) for i, w in zip(identities, weights)]) + f"|{config.validation_fraction}|{block_size}"
    return TrainingData(train, validation, weights, hashlib.sha256(key.encode()).hexdigest()[:16])
