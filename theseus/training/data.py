"""A run's batches: training windows from a step on, the fixed validation set, and a
fingerprint of the data that checkpoints record, so that resuming on other data is refused.

A batch is a pure function of (seed, step), so the step is the whole data position.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import keras

from theseus.config import ConfigError
from theseus.data import TokenWindows, ValidationWindows
from theseus.data.config import training_data
from theseus.data.sft import ChatDataConfig, chat_datasets
from theseus.training.accumulation import micro_steps
from theseus.training.checkpoint import digest
from theseus.training.config import BaseTrainerConfig


@dataclasses.dataclass(frozen=True)
class Batches:
    train: keras.utils.PyDataset
    validation: keras.utils.PyDataset
    fingerprint: str
    kind: str = "tokens"
    """What the data is, for messages ("tokens", "chats")."""


def check_vocabulary(tokenizer: Any, vocab_size: int | None) -> None:
    """A ConfigError when the model's `architecture/vocab_size` (if it has one) cannot hold every token."""
    if isinstance(vocab_size, int) and tokenizer.vocab_size > vocab_size:
        raise ConfigError(
            f"architecture/vocab_size={vocab_size} is smaller than the {tokenizer.vocab_size} "
            f"tokens of data/tokenizer {tokenizer.name}"
        )


def text_batches(
    config: BaseTrainerConfig, tokenizer: Any, total_steps: int, start_step: int, vocab_size: int | None
) -> Batches:
    """The pretraining batches of `data/source` (or `data/mixture`), from `start_step` on."""
    check_vocabulary(tokenizer, vocab_size)
    data = training_data(config, tokenizer, config.block_size)
    try:
        return Batches(
            TokenWindows(
                data.train,
                config.block_size,
                config.batch_size,
                total_steps - start_step,
                config.seed,
                start_step,
                weights=data.weights,
            ),
            ValidationWindows(
                data.validation,
                config.block_size,
                config.batch_size,
                config.validation_batches,
                weights=data.weights,
                parts=micro_steps(config.batch_size, config.micro_batch_size),
            ),
            data.fingerprint,
        )
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None


def chat_batches(
    config: BaseTrainerConfig, chat: ChatDataConfig, tokenizer: Any, total_steps: int, start_step: int
) -> Batches:
    """Chat rows of `data/source` rendered with the tokenizer's template, loss on the assistant's tokens."""
    source = Path(config.source).expanduser()
    identity = digest([source])[:16] if source.is_file() else config.source  # a missing file: chat_datasets says so
    key = f"{identity}|{chat.packing}|{config.validation_fraction}|{config.block_size}"
    train, validation = chat_datasets(
        config.source,
        tokenizer,
        config.block_size,
        config.batch_size,
        total_steps - start_step,
        seed=config.seed,
        start_step=start_step,
        packing=chat.packing,
        validation_fraction=config.validation_fraction,
        validation_batches=config.validation_batches,
    )
    validation.parts = micro_steps(config.batch_size, config.micro_batch_size)  # weighted per micro-batch
    return Batches(train, validation, hashlib.sha256(key.encode()).hexdigest()[:16], kind="chats")
