"""Data jobs: `data/tokenize` turns a document source into token shards for training.

    theseus run tok-docs recipes/data/tokenize.yaml runs/
    python -m theseus.recipes gpt/train/pretrain --data.source=runs/tok-docs

Running the same command again after a kill resumes the job where its last complete
shard ended.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from theseus.config import ConfigError, build, field
from theseus.data.config import SourceConfig
from theseus.data.shards import is_shard_folder
from theseus.data.tokenize import tokenize_to_shards
from theseus.data.tokenizers import load_tokenizer


@dataclasses.dataclass
class TokenizeConfig(SourceConfig):
    """A source, a tokenizer, and how to cut the result into shards."""

    shard_tokens: int = field(
        "tokenize/shard_tokens",
        default=100_000_000,
        bounds=">= 1",
        help="a train shard is closed (and the job can resume from there) at this many tokens",
    )
    workers: int = field(
        "tokenize/workers",
        default=0,
        bounds=">= 0",
        help="encoding processes; 1 = in this process; 0 = one per core (byte tokenizer: this process)",
    )
    progress_bar: bool = field("logging/progress_bar", default=True, help="show a progress bar with tokens per second")


class Tokenize:
    """Tokenize a text source into token shards (train + validation) that training reads."""

    CONFIG = TokenizeConfig

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG]

    def __init__(self, values: dict[str, Any], run_dir: Path | None = None) -> None:
        self.config = cfg = build(self.CONFIG, values)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is None:
            raise ConfigError("data/tokenize writes its shards into its run folder: run it with `theseus run` or --out")
        if is_shard_folder(cfg.source):
            raise ConfigError(f"data/source: {cfg.source} is already token shards: train on it directly")
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        cfg.reader().check()  # before the run folder is made

    def run(self) -> dict[str, Any]:
        cfg = self.config
        result = tokenize_to_shards(
            cfg.reader(),
            self.tokenizer,
            self.run_dir,
            validation_fraction=cfg.validation_fraction,
            shard_tokens=cfg.shard_tokens,
            workers=cfg.workers,
            progress=cfg.progress_bar,
        )
        print(
            f"{result['documents']:,} documents -> {result['train_tokens']:,} train + "
            f"{result['validation_tokens']:,} validation tokens in {result['shards']} shards; "
            f"train on them with data.source={self.run_dir} data.tokenizer={cfg.tokenizer}",
            flush=True,
        )
        if cfg.validation_fraction > 0 and not result["validation_tokens"]:
            print(
                f"note: no document was held out ({result['documents']} x {cfg.validation_fraction} < 1): "
                "in a mixture, validation uses the other sources",
                flush=True,
            )
        return result
