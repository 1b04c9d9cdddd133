"""`theseus generate`: print completions of prompts from a run, checkpoint or HF folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from theseus.config import ConfigError
from theseus.experiments.sources import load


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


def complete(
    source: str, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8, **settings
) -> list[str]:
    """The continuation of each prompt (stopping at the tokenizer's EOS); `settings` are
    `temperature`, `top_k`, `top_p`, `seed` (see `theseus.generation.Generator`)."""
    lm = load(source, batch_size=batch_size)
    return lm.generate(prompts, max_new_tokens, **settings)
