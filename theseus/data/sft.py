"""Supervised fine-tuning data: chat records, rendered with the tokenizer's own chat
template, with loss on the assistant's tokens only.

A record is one JSON line, either `{"messages": [{"role": ..., "content": ...}, ...]}`
or `{"prompt": ..., "response": ...}` (optionally `"system"`), which becomes a user turn
and an assistant turn. What the assistant "says" is found from the template itself:
assistant turn i spans the text that rendering `messages[: i + 1]` adds after rendering
`messages[:i]` with the generation prompt, so its end-of-turn marker is learned too and
no template needs `{% generation %}` markers. Tokens overlapping those spans are the
assistant's (the rule transformers' `return_assistant_tokens_mask` applies).

Targets are the next token where it is the assistant's and `IGNORE_INDEX` (-100)
everywhere else, so `model.fit` with the causal-LM loss learns the answers, never the
prompts. Conversations are packed end to end into `block_size + 1` windows (no token
wasted on padding) or padded one per row; rows without any assistant target are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError, field
from theseus.data.loader import TokenWindows, ValidationWindows
from theseus.data.sources import jsonl_records
from theseus.data.tokenize import is_validation


@dataclasses.dataclass
class ChatDataConfig:
    """How a fine-tuning job turns chat records into rows (its source and tokenizer are
    `data/source` and `data/tokenizer`)."""

    packing: Literal["packed", "padded"] = field(
        "data/packing",
        default="packed",
        help="packed: conversations end to end in full rows; padded: one conversation per row, cut at block_size",
    )


def read_chat_records(path: str | Path) -> list[list[dict[str, str]]]:
    """The conversations of a chat JSONL file (`messages`, or `prompt` + `response`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data/source: chat data not found: {path}")
    conversations = [_messages(record, f"line {number} of {path}") for number, record in jsonl_records(path)]
    if not conversations:
        raise ConfigError(f"data/source: no chat records in {path}")
    return conversations


def _messages(record: Any, where: str) -> list[dict[str, str]]:
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
        ok = (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        )
        if not ok:
            raise ConfigError(f"data/source: {where}: `messages` must be a list of {{role, content}} strings")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        system = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
        return system + [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ConfigError(f"data/source: {where} has neither `messages` nor `prompt` and `response` (it has {keys})")


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the rendered conversation, and which of them are the assistant's.

    `tokenizer` is an `HFTokenizer` whose folder has a chat template; the ids are those
    of `apply_chat_template(messages, tokenize=True)`.
    """
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None or not getattr(hf, "chat_template", None):
        raise ConfigError(
            f"data/tokenizer {tokenizer.name!r} has no chat template: fine-tuning on chats needs a "
            "Hugging Face tokenizer folder whose tokenizer_config.json (or chat_template.jinja) has one"
        )
    if not getattr(hf, "is_fast", False):
        raise ConfigError(
            f"data/tokenizer {tokenizer.name!r} is not a fast tokenizer (no tokenizer.json): assistant tokens need its offsets"
        )

    def render(part: list[dict[str, str]], prompt: bool = False) -> str:
        return hf.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt)

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ConfigError(
                f"the chat template of {tokenizer.name} does not render turn {i} as an extension of the "
                "turns before it, so the assistant's tokens cannot be found"
            )
        spans.append((len(before), len(through)))
    encoding = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], dtype=np.int32)
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    start, end = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1)  # a zero-width token covers its place
    assistant = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        assistant |= (start < hi) & (end > lo)
    return ids, assistant


class ChatRows:
    """Rows `(inputs, targets)` of rendered conversations, for `TokenWindows` / `ValidationWindows`.

    Args:
        conversations: `(ids, assistant)` pairs from `render_chat`.
        block_size: tokens per row.
        packing: "packed" (conversations end to end, cut into `block_size + 1` windows) or
            "padded" (one conversation per row, cut at `block_size + 1`, padded with `pad_id`).
        pad_id: the id filling padded rows (its targets are `IGNORE_INDEX`).
    """

    def __init__(
        self,
        conversations: Sequence[tuple[np.ndarray, np.ndarray]],
        block_size: int,
        packing: str = "packed",
        pad_id: int = 0,
    ):
        if packing not in ("packed", "padded"):
            raise ConfigError(f"data/packing must be packed or padded, got {packing!r}")
        width = block_size + 1
        self.block_size, self.packing = block_size, packing
        if packing == "packed":
            ids = np.concatenate([c[0] for c in conversations]) if conversations else np.zeros(0, np.int32)
            mask = np.concatenate([c[1] for c in conversations]) if conversations else np.zeros(0, bool)
            n = len(ids) // width
            self.ids, self.mask = ids[: n * width].reshape(n, width), mask[: n * width].reshape(n, width)
        else:
            self.ids = np.full((len(conversations), width), pad_id, dtype=np.int32)
            self.mask = np.zeros((len(conversations), width), dtype=bool)
            for row, (ids, mask) in enumerate(conversations):
                self.ids[row, : min(len(ids), width)] = ids[:width]
                self.mask[row, : min(len(mask), width)] = mask[:width]
        keep = self.mask[:, 1:].any(axis=1)  # a row must hold at least one target
        self.ids, self.mask = self.ids[keep], self.mask[keep]
        self.dropped = int((~keep).sum())

    def __len__(self) -> int:
        return len(self.ids)

    def examples(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.ids[rows], self.mask[rows]  # (B, T + 1)
        targets = np.where(mask[:, 1:], ids[:, 1:], IGNORE_INDEX).astype(np.int32)
        return ids[:, :-1].astype(np.int32), targets


def chat_datasets(
    source: str,
    tokenizer: Any,
    block_size: int,
    batch_size: int,
    steps: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    packing: str = "packed",
    validation_fraction: float = 0.05,
    validation_batches: int | None = None,
) -> tuple[TokenWindows, ValidationWindows]:
    """Fine-tuning batches from a chat JSONL file: shuffled training rows from `start_step`
    on (a pure function of seed and step, as for pretraining) and fixed validation rows;
    every `validation_fraction`-th conversation is held out."""
    conversations = [render_chat(tokenizer, m) for m in read_chat_records(source)]
    held_out = is_validation(np.arange(len(conversations)), validation_fraction)
    pad_id = getattr(tokenizer.tokenizer, "pad_token_id", None)
    pad_id = tokenizer.eos_id if pad_id is None else int(pad_id)
    train = ChatRows([c for c, v in zip(conversations, held_out) if not v], block_size, packing, pad_id)
    validation = ChatRows([c for c, v in zip(conversations, held_out) if v], block_size, packing, pad_id)
    try:
        return (
            TokenWindows(train, block_size, batch_size, steps, seed, start_step),
            ValidationWindows(validation, block_size, batch_size, validation_batches),
        )
    except ValueError as error:
        raise ConfigError(f"data/source {source}: {error}") from None
