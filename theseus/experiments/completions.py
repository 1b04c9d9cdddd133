"""`theseus generate`: print completions of prompts from a run, checkpoint or HF folder.

One prompt streams (its continuation printed piece by piece as it is generated); several
are generated as batches and printed when done. Either way the output is the same text:
each prompt, its continuation, and a rule of dashes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from theseus.config import ConfigError
from theseus.experiments.sources import load

RULE = "-" * 40


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """Prompts from the command line, then one per line of `prompts_file` (`\\n` in a
    line stands for a newline); at least one."""
    found = list(prompts)
    if prompts_file is not None:
        path = Path(prompts_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompts file not found: {path}")
        found += [line.replace("\\n", "\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not found:
        raise ConfigError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return found


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """`prompt` as a user's turn rendered by the tokenizer's chat template, up to where
    the assistant's reply begins (`apply_chat_template(..., add_generation_prompt=True)`)."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None or not getattr(hf, "chat_template", None):
        raise ConfigError(
            f"--chat: the tokenizer {tokenizer.name!r} has no chat template (a Hugging Face tokenizer folder "
            "whose tokenizer_config.json or chat_template.jinja has one)"
        )
    return hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def complete(
    source: str, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8, **settings
) -> list[str]:
    """The continuation of each prompt (stopping at the tokenizer's EOS); `settings` are
    `temperature`, `top_k`, `top_p`, `seed` (see `theseus.generation.Generator`)."""
    lm = load(source, batch_size=batch_size)
    return lm.generate(prompts, max_new_tokens, **settings)


def print_completions(
    source: str,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat: bool = False,
    out: TextIO | None = None,
    **settings,
) -> None:
    """Write each prompt (with `chat`, as the chat template renders it), its continuation
    and a rule to `out` (stdout); a single prompt's continuation is written as it is generated."""
    out = out or sys.stdout
    lm = load(source, batch_size=batch_size)
    if chat:
        prompts = [chat_prompt(lm.tokenizer, prompt) for prompt in prompts]
    if len(prompts) == 1:
        continuations = [lm.stream(prompts[0], max_new_tokens, **settings)]
    else:
        continuations = [[text] for text in lm.generate(prompts, max_new_tokens, **settings)]
    for prompt, pieces in zip(prompts, continuations):
        print(prompt, end="", file=out, flush=True)
        for piece in pieces:
            print(piece, end="", file=out, flush=True)
        print(f"\n{RULE}", file=out, flush=True)
