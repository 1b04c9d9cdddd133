"""Data jobs: `data/tokenize` turns a document source into token shards for training.

    theseus run tok-docs recipes/data/tokenize.yaml runs/
    python -m theseus.recipes gpt/train/pretrain --data.source=runs/tok-docs

Running the same command again after a kill resumes the job where its last complete
shard ended. `tokenize.engine=ray` encodes on Ray actors (a local cluster, or the one at
`RAY_ADDRESS`); `tokenize.output=gs://bucket/shards` writes the shards to an fsspec URL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from theseus.config import ConfigError, build, field
from theseus.data.config import SourceConfig
from theseus.data.engines import check_engine
from theseus.data.shards import is_shard_folder
from theseus.data.storage import RemoteFolder, is_url
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
        help="encoding processes (Ray actors with tokenize/engine=ray); 1 = in this process; "
        "0 = one per core (local byte tokenizer: this process)",
    )
    engine: str = field(
        "tokenize/engine",
        default="local",
        help="'local' (processes on this host) or 'ray' (Ray actors: a local cluster, or the one at $RAY_ADDRESS)",
    )
    output: str = field(
        "tokenize/output",
        default="",
        help="where the shards go: '' = the run folder, or a folder or fsspec URL (file://, memory://, gs://, s3://)",
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
        check_engine(cfg.engine)
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        cfg.reader().check()  # before the run folder is made
        self.output = cfg.output or self.run_dir
        if is_url(self.output):
            RemoteFolder(self.output, what="tokenize/output")  # its file system is there

    def run(self) -> dict[str, Any]:
        cfg = self.config
        result = tokenize_to_shards(
            cfg.reader(),
            self.tokenizer,
            self.output,
            validation_fraction=cfg.validation_fraction,
            shard_tokens=cfg.shard_tokens,
            workers=cfg.workers,
            progress=cfg.progress_bar,
            engine=cfg.engine,
        )
        print(
            f"{result['documents']:,} documents -> {result['train_tokens']:,} train + "
            f"{result['validation_tokens']:,} validation tokens in {result['shards']} shards; "
            f"train on them with data.source={self.output} data.tokenizer={cfg.tokenizer}",
            flush=True,
        )
        if cfg.validation_fraction > 0 and not result["validation_tokens"]:
            print(
                f"note: no document was held out ({result['documents']} x {cfg.validation_fraction} < 1): "
                "in a mixture, validation uses the other sources",
                flush=True,
            )
        return result
