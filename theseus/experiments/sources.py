"""Model sources: from a folder on disk to a `LanguageModel`, for `FAMILY/eval/evaluate`,
`theseus generate` and lm-evaluation-harness (`theseus.experiments.harness`).

    RUN/                         a run folder (config.yaml + checkpoints/): its newest checkpoint
    RUN/checkpoints/step_N/      one checkpoint of a run
    FOLDER/                      config.json + *.safetensors (+ tokenizer): a Hugging Face model
    ADAPTER/                     adapter_config.json + adapter_model.safetensors: a PEFT LoRA
                                 adapter over the local base it names, merged into it

A run is rebuilt from its own config.yaml: its job's model and tokenizer, and, when an
evaluation asks for it, the held-out data exactly as its training job validated on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from theseus.base.sharding import build_abstractly
from theseus.config import ConfigError, build
from theseus.data import load_tokenizer
from theseus.data.tokenizers import HFTokenizer
from theseus.evaluation.evaluator import BaseEvaluator
from theseus.evaluation.language_model import LanguageModel
from theseus.experiments import runs
from theseus.experiments.keras_hub import tokenizer_folder
from theseus.model.convert.peft import ADAPTER_CONFIG
from theseus.model.huggingface import HFCheckpoint, HFCompat
from theseus.model.keras_hub import PRESET_KEY
from theseus.model.models.causal_lm import as_causal_lm
from theseus.training import checkpoint as ckpt

M = TypeVar("M")

RUN_CONFIG = "config.yaml"
HF_CONFIG = "config.json"


def describe(source: str) -> tuple[str, Path]:
    """What `source` is (`"run"`, `"checkpoint"` or `"huggingface"`) and its folder;
    a ConfigError when it is none of them."""
    path = Path(source).expanduser()
    if (path / HF_CONFIG).is_file() or (path / ADAPTER_CONFIG).is_file():  # a PEFT adapter: its base, merged
        return "huggingface", path
    if (path / "model.weights.h5").is_file() and _run_config(path).is_file():
        return "checkpoint", path
    if (path / RUN_CONFIG).is_file():
        return "run", path
    if not path.exists():
        raise ConfigError(f"model source not found: {path}")
    raise ConfigError(
        f"{path} is not a run folder (config.yaml), a checkpoint folder (RUN/checkpoints/step_N) "
        "or a Hugging Face model folder (config.json) or PEFT adapter folder (adapter_config.json)"
    )


def _run_config(checkpoint: Path) -> Path:
    """A checkpoint's config: its own copy, else its run's."""
    own = checkpoint / RUN_CONFIG
    return own if own.is_file() else checkpoint.parent.parent / RUN_CONFIG


def load(
    source: str,
    batch_size: int = 8,
    max_length: int | None = None,
    model_class: type | None = None,
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
    _check_class(model, model_class, path)
    return LanguageModel(model, tokenizer, batch_size=batch_size, max_length=max_length, heldout=heldout)


def check(source: str, model_class: type | None = None) -> None:
    """A ConfigError unless `load(source, model_class=model_class)` would find a model: the
    folder, its run's config and complete checkpoint, its tokenizer, and the model built
    abstractly (no weights read, no memory): what an evaluation refuses before it writes."""
    kind, path = describe(source)
    if kind == "huggingface":
        model = build_abstractly(lambda: HFCompat(id=str(path), pretrained=False).architecture)
    else:
        run_dir, job_class, values, _ = _open_run(path, kind)
        model = build_abstractly(lambda: _run_model(job_class, values))
        _run_tokenizer(values, run_dir)
    _check_class(model, model_class, path)


def _check_class(model: Any, model_class: type | None, path: Path) -> None:
    if model_class is not None and not isinstance(model, model_class):
        raise ConfigError(f"{path} holds a {type(model).__name__}, not a {model_class.__name__}")


def _open_run(path: Path, kind: str) -> tuple[Path, type, dict[str, Any], ckpt.Checkpoint]:
    """The run folder, job class, config values and verified checkpoint of a run (or of one
    of its checkpoints): a ConfigError for each way one can be missing or damaged."""
    run_dir = path if kind == "run" else path.parent.parent
    key, _, values = runs.read_config(run_dir / RUN_CONFIG if kind == "run" else _run_config(path))
    job_class = runs.job_class(key)
    if kind == "run":
        checkpoint = ckpt.latest(run_dir / "checkpoints")
        if checkpoint is None:
            raise ConfigError(f"run {run_dir} has no complete checkpoint yet")
    else:
        try:
            checkpoint = ckpt.Checkpoint(path, int(path.name.split("_", 1)[1]))
        except (IndexError, ValueError):
            raise ConfigError(f"{path} is not named like a checkpoint (step_N)") from None
    try:
        ckpt.verify(checkpoint.path)
    except ckpt.CheckpointError as error:
        raise ConfigError(str(error)) from None
    return run_dir, job_class, values, checkpoint


def _run_model(job_class: type, values: dict[str, Any]) -> Any:
    """The model as its job builds it (float32 here, whatever precision it trained in), unloaded."""
    model = as_causal_lm(build(job_class.MODEL, values))
    model.build((None, values["architecture/block_size"]))
    return model


def _run_tokenizer(values: dict[str, Any], run_dir: Path) -> Any:
    name = values["data/tokenizer"]
    try:
        if PRESET_KEY in values:  # a keras-hub run: `auto` is its preset's tokenizer, as its job read it
            name = tokenizer_folder(name, values[PRESET_KEY])
        return load_tokenizer(name)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data/tokenizer of {run_dir}: {error}") from None


def _load_run(path: Path, kind: str):
    run_dir, job_class, values, checkpoint = _open_run(path, kind)
    model = _run_model(job_class, values)
    model.load_weights(checkpoint.path / ckpt.MODEL_FILE)  # the weights only: no optimizer to restore
    tokenizer = _run_tokenizer(values, run_dir)
    validation = None

    def heldout():
        """The run's validation batches, from its own training job (built only if asked)."""
        nonlocal validation
        if validation is None:
            validation = job_class(values).datasets(0).validation
        return (validation[i] for i in range(len(validation)))

    return model, tokenizer, heldout


def _load_huggingface(path: Path):
    model = HFCompat(id=str(path))
    try:  # the folder's tokenizer (a PEFT adapter's base's)
        tokenizer = HFTokenizer(model.checkpoint.folder)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    # The family model inside: a GPT or Llama with the checkpoint's weights and a KV cache.
    return model.architecture, tokenizer, None


class RunEvaluator(BaseEvaluator[M]):
    """Evaluate a `MODEL` from `evaluation/checkpoint`: a run folder, one of its checkpoints
    or a Hugging Face folder (see `describe`)."""

    def __init__(self, values: dict[str, Any], run_dir: Path | None = None) -> None:
        super().__init__(values, run_dir)
        kind, path = describe(self.config.checkpoint)  # a wrong path fails before anything runs
        if kind == "huggingface":  # so do its weights: all there, as safetensors (never a pickle)
            HFCheckpoint(str(path)).plan()
        check(self.config.checkpoint, self.MODEL)  # and a model that is not one, or not complete

    def load(self) -> LanguageModel:
        cfg = self.config
        return load(cfg.checkpoint, batch_size=cfg.batch_size, max_length=cfg.max_length, model_class=self.MODEL)
