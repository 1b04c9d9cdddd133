"""`Perplexity`: token-weighted perplexity and bits per byte of a text source or held-out set."""

from __future__ import annotations

import math

from theseus.config import ConfigError
from theseus.evaluation.base import Evaluation
from theseus.evaluation.language_model import LanguageModel, bits_per_byte


class Perplexity(Evaluation):
    """Token-weighted perplexity and bits per byte.

    With a `source` (`"embedded"`, a text file, a folder, anything `theseus.data`
    reads), each document is scored whole in rolling windows, its first token conditioned
    on EOS (lm-evaluation-harness's `loglikelihood_rolling`); its bytes are the UTF-8
    bytes of the documents. Without one, it scores the held-out batches the job hands the
    model (`lm.heldout`: a training run's validation set), counting the bytes of their
    decoded targets.

    Returns `nll` (nats per token), `ppl` = exp(nll), `bits_per_byte` = nll * tokens /
    (bytes * ln 2), `tokens` and `bytes`.
    """

    name = "perplexity"

    def __init__(self, source: str | None = None) -> None:
        self.source = source or None
        self.documents: list[str] | None = None
        if self.source is not None:
            from theseus.data import read_text_source

            try:
                self.documents = [d for d in read_text_source(self.source) if d]
            except (FileNotFoundError, ConfigError) as error:
                reason = str(error).removeprefix("data/source: ")  # this is not the training source
                raise ConfigError(f"evaluation 'perplexity:{self.source}': {reason}") from None
            if not self.documents:
                raise ConfigError(f"evaluation 'perplexity:{self.source}': no text in it")

    def __call__(self, lm: LanguageModel) -> dict[str, float]:
        if self.documents is not None:
            logprob = sum(lm.rolling_loglikelihood(self.documents))
            tokens = sum(len(lm.encode(d)) for d in self.documents)
            n_bytes = sum(len(d.encode("utf-8")) for d in self.documents)
        elif lm.heldout is not None:
            logprob, tokens, rows = lm.score_batches(lm.heldout())
            n_bytes = sum(len(lm.tokenizer.decode(row).encode("utf-8")) for row in rows)
        else:
            raise ConfigError(
                "evaluation 'perplexity' has no held-out set here: name a text source as 'perplexity:PATH'"
            )
        nll = -logprob / tokens
        return {
            "nll": nll,
            "ppl": math.exp(min(nll, 700.0)),
            "bits_per_byte": bits_per_byte(logprob, n_bytes),
            "tokens": tokens,
            "bytes": n_bytes,
        }
