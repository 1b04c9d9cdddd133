"""A model source as an lm-evaluation-harness model, registered with the harness as `theseus`:

    import lm_eval
    import theseus.experiments.harness  # noqa: F401  (registers `theseus`)
    lm_eval.simple_evaluate(model="theseus", model_args="source=runs/dev,batch_size=8", tasks=[...])

Needs the optional `eval` extra (`lm_eval`).
"""

from __future__ import annotations

from lm_eval.api.registry import register_model

from theseus.evaluation.harness import HarnessLM
from theseus.experiments.sources import load


@register_model("theseus")
class SourceLM(HarnessLM):
    """`HarnessLM` on the model in `source`: a training run folder, a checkpoint folder
    (RUN/checkpoints/step_N) or a Hugging Face model folder; `batch_size` and `max_length`
    as for `theseus.experiments.sources.load`."""

    def __init__(
        self, source: str, batch_size: int = 8, max_length: int | None = None, max_gen_toks: int = 256
    ) -> None:
        # The harness passes `model_args` as text.
        super().__init__(
            load(source, batch_size=int(batch_size), max_length=int(max_length) if max_length else None),
            max_gen_toks=max_gen_toks,
        )
