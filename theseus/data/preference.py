"""Preference pairs (DPO's data): JSONL records -> a chosen and a rejected row per pair.

A record is one JSON line, either `{"prompt": ..., "chosen": ..., "rejected": ...}` or
`{"messages": [...], "chosen": ..., "rejected": ...}`: the conversation so far, then the two
candidate final assistant turns (strings). With a tokenizer that has a chat template, an
answer is rendered as the assistant's final turn (`theseus.data.sft.render_chat`; a plain
prompt is the user's turn), end-of-turn marker included; without one (the byte tokenizer),
a row is the prompt's text, the answer's text, then EOS (`messages` need a template).

Only the answer's tokens count: a row's targets are its next tokens where they are the
final answer's and `IGNORE_INDEX` elsewhere, so the summed log-probability of the targets
is log p(answer | prompt). Rows are `block_size + 1` wide, padded one pair per row and cut
on the left when too long (the answer's end decides a preference more often than the
prompt's start). A batch holds pairs as consecutive rows, chosen then rejected: inputs
`(2P, block_size)` and `y` `(2P, block_size + 1)` float32, the targets followed by the row's
log-probability under the reference model (`theseus.training.preference` reads it back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError
from theseus.data.engines import is_validation
from theseus.data.permutation import Permutation
from theseus.data.sft import render_chat
from theseus.data.sources import jsonl_records

Record = tuple[str | list[dict[str, str]], str, str]
"""(prompt text or the conversation's messages, chosen answer, rejected answer)."""


def read_preference_records(path: str | Path) -> list[Record]:
    """The pairs of a preference JSONL file; a bad line is one ConfigError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data/source: preference data not found: {path}")
    records = [_record(record, f"line {number} of {path}") for number, record in jsonl_records(path)]
    if not records:
        raise ConfigError(f"data/source: no preference pairs in {path}")
    return records


def _record(record: Any, where: str) -> Record:
    answers = isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("chosen", "rejected"))
    if answers and isinstance(record.get("prompt"), str):
        return record["prompt"], record["chosen"], record["rejected"]
    messages = record.get("messages") if isinstance(record, dict) else None
    if answers and isinstance(messages, list) and all(_is_message(m) for m in messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages], record["chosen"], record["rejected"]
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ConfigError(
        f"data/source: {where} needs `chosen` and `rejected` strings and a `prompt` string or `messages` "
        f"(a list of {{role, content}} strings); it has {keys}"
    )


def _is_message(message: Any) -> bool:
    return isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(getattr(tokenizer, "tokenizer", None), "chat_template", None))


def encode_answer(tokenizer: Any, prompt: str | list[dict[str, str]], answer: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the prompt followed by `answer`, and which of them are the answer's."""
    if has_chat_template(tokenizer) or isinstance(prompt, list):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        ids, assistant = render_chat(tokenizer, [*messages, {"role": "assistant", "content": answer}])
        return ids, last_run(assistant)
    prompt_ids = np.asarray(tokenizer.encode(prompt), np.int32)
    answer_ids = np.append(np.asarray(tokenizer.encode(answer), np.int32), tokenizer.eos_id)
    mask = np.concatenate([np.zeros(len(prompt_ids), bool), np.ones(len(answer_ids), bool)])
    return np.concatenate([prompt_ids, answer_ids]).astype(np.int32), mask


def last_run(mask: np.ndarray) -> np.ndarray:
    """`mask` with only its last run of True left (the final assistant turn of a conversation)."""
    true = np.flatnonzero(mask)
    out = np.zeros_like(mask)
    if len(true):
        gaps = np.flatnonzero(np.diff(true) > 1)
        out[true[gaps[-1] + 1 if len(gaps) else 0 :]] = True
    return out


class PreferencePairs:
    """Every pair of a file as two `block_size + 1` rows (chosen, rejected).

    Attributes:
        ids: (N, 2, block_size + 1) int32, right-padded with `pad_id`.
        mask: (N, 2, block_size + 1) bool, true on the answers' tokens.
        truncated: how many rows lost tokens on the left to fit.
    """

    def __init__(self, records: list[Record], tokenizer: Any, block_size: int, pad_id: int) -> None:
        width = block_size + 1
        self.ids = np.full((len(records), 2, width), pad_id, np.int32)
        self.mask = np.zeros((len(records), 2, width), bool)
        self.truncated = 0
        for n, (prompt, *answers) in enumerate(records):
            for k, answer in enumerate(answers):
                ids, mask = encode_answer(tokenizer, prompt, answer)
                self.truncated += len(ids) > width
                self.ids[n, k, : min(len(ids), width)] = ids[-width:]
                self.mask[n, k, : min(len(ids), width)] = mask[-width:]
        empty = ~self.mask[:, :, 1:].any(axis=2)
        if empty.any():
            pair = int(np.flatnonzero(empty.any(axis=1))[0])
            raise ConfigError(f"data/source: pair {pair} has an answer with no token to score (an empty answer?)")

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets `(2P, block_size)` of `pairs`, each pair's chosen row then its rejected one."""
        ids = self.ids[pairs].reshape(-1, self.ids.shape[-1])  # (2P, T + 1)
        mask = self.mask[pairs].reshape(ids.shape)
        targets = np.where(mask[:, 1:], ids[:, 1:], IGNORE_INDEX).astype(np.int32)
        return ids[:, :-1], targets


class PreferenceBatches(keras.utils.PyDataset):
    """Batches `(inputs, y)` of `pairs_per_batch` pairs, with each row's reference log-probability.

    Training batches (`shuffle`) are a pure function of (seed, step), as the token loaders'
    are: global pair slot `g` is pair `Permutation(seed, pass)(g mod N)`, so a run resumed at
    step k reads what an uninterrupted one would. Validation batches are the pairs in order.

    Args:
        pairs: the pairs.
        indices: which of `pairs` this dataset reads (the training or the held-out ones).
        reference: (len(pairs), 2) float32, log p_ref of each chosen and rejected answer.
        pairs_per_batch: pairs per batch (half the rows).
        steps: batches.
        shuffle: training order (True) or in order (False).
    """

    def __init__(
        self,
        pairs: PreferencePairs,
        indices: np.ndarray,
        reference: np.ndarray,
        pairs_per_batch: int,
        steps: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        if len(indices) < pairs_per_batch:
            raise ConfigError(
                f"data/source: {len(indices)} {'training' if shuffle else 'held-out'} pairs, "
                f"fewer than the {pairs_per_batch} pairs of a batch"
            )
        self.pairs, self.indices, self.reference = pairs, np.asarray(indices), np.asarray(reference, np.float32)
        self.pairs_per_batch, self.steps = pairs_per_batch, steps
        self.shuffle, self.seed, self.start_step = shuffle, seed, start_step

    def __len__(self) -> int:
        return self.steps

    def chosen(self, index: int) -> np.ndarray:
        """The pairs of batch `index`."""
        slots = np.arange(self.pairs_per_batch, dtype=np.int64)
        if not self.shuffle:
            return self.indices[index * self.pairs_per_batch + slots]
        data_pass, position = np.divmod((self.start_step + index) * self.pairs_per_batch + slots, len(self.indices))
        order = np.empty_like(position)
        for p in np.unique(data_pass):
            at = data_pass == p
            order[at] = Permutation(len(self.indices), key=(self.seed, int(p)))(position[at])
        return self.indices[order]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = self.chosen(index)
        inputs, targets = self.pairs.rows(pairs)
        reference = self.reference[pairs].reshape(-1, 1)  # (2P, 1): chosen, rejected, ...
        return inputs, np.concatenate([targets.astype(np.float32), reference], axis=1)


def split_pairs(count: int, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out pairs (every `1 / validation_fraction`-th pair is held out)."""
    held_out = is_validation(np.arange(count), validation_fraction)
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)
