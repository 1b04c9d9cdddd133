"""From a folder on disk to a `LanguageModel`: a training run, one checkpoint, or Hugging Face.

    RUN/                         a run folder (config.yaml + checkpoints/): its newest checkpoint
    RUN/checkpoints/step_N/      one checkpoint of a run
    FOLDER/                      config.json + *.safetensors (+ tokenizer): a Hugging Face model

A run is rebuilt by its own training job (model, precision, tokenizer and held-out data
exactly as it trained), so anything a trainer can train, this can evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from theseus.config import ConfigError
from theseus.evaluation.language_model import LanguageModel

RUN_CONFIG = "config.yaml"
HF_CONFIG = "config.json"


def describe(source: str) -> tuple[str, Path]:
    """What `source` is (`"run"`, `"checkpoint"` or `"huggingface"`) and its folder;
    a ConfigError when it is none of them."""
    path = Path(source).expanduser()
    if (path / HF_CONFIG).is_file():
        return "huggingface", path
    if (path / RUN_CONFIG).is_file():
        return "run", path
    if path.parent.name == "checkpoints" and (path.parent.parent / RUN_CONFIG).is_file() and path.is_dir():
        return "checkpoint", path
    if not path.exists():
        raise ConfigError(f"model source not found: {path}")
    raise ConfigError(
        f"{path} is not a run folder (config.yaml), a checkpoint folder (RUN/checkpoints/step_N) "
        "or a Hugging Face model folder (config.json)"
    )


def load(
    source: str,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    model_class: Optional[type] = None,
) -> LanguageModel:
    """The model and tokenizer in `source`, as a `LanguageModel`.

    Args:
        model_class: when given, the model must be one (e.g. `gpt/eval/evaluate` wants a GPT).
    """
    kind, path = describe(source)
    if kind == "huggingface":
        model, tokenizer, heldout = _load_huggingface(path)
    else:
        model, tokenizer, heldout = _load_run(path, kind)
    if model_class is not None and not isinstance(model, model_class):
        raise ConfigError(f"{path} holds a {type(model).__name__}, not a {model_class.__name__}")
    return LanguageModel(model, tokenizer, batch_size=batch_size, max_length=max_length, heldout=heldout)


def _load_run(path: Path, kind: str):
    from theseus.base import run as runs
    from theseus.training import checkpoint as ckpt

    run_dir = path if kind == "run" else path.parent.parent
    key, _, values = runs.read_config(run_dir / RUN_CONFIG)
    job = runs.job_class(key)(values)  # no run folder: it writes nothing
    if kind == "run":
        checkpoint = ckpt.latest(run_dir / "checkpoints")
        if checkpoint is None:
            raise ConfigError(f"run {run_dir} has no complete checkpoint yet")
    else:
        try:
            checkpoint = ckpt.Checkpoint(path, int(path.name.split("_", 1)[1]))
        except (IndexError, ValueError):
            raise ConfigError(f"{path} is not named like a checkpoint (step_N)") from None
    model = job.build_model()
    try:
        ckpt.restore(checkpoint, model)
    except ckpt.CheckpointError as error:
        raise ConfigError(str(error)) from None
    validation = None

    def heldout():
        nonlocal validation
        if validation is None:
            validation = job.datasets(0)[1]
        return (validation[i] for i in range(len(validation)))

    return model, job.tokenizer(), heldout


def _load_huggingface(path: Path):
    from theseus.data.tokenizers import HFTokenizer
    from theseus.model.huggingface import HFCompat

    try:
        tokenizer = HFTokenizer(path)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    # The family model inside: a GPT or Llama with the checkpoint's weights and a KV cache.
    return HFCompat(id=str(path)).architecture, tokenizer, None
