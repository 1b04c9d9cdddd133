"""Every refusal before the run folder is touched (issue 16, item 1).

For every registered job (one per distinct config table: the Hugging Face families share
theirs) the walk sets each config key, one at a time, to a value of the right type that
is invalid (zero, negative, non-dividing, out of range, a missing path) and runs the job
as `theseus run` does, in this process: each must be one line on stderr, exit 2, no
traceback, and no run folder. A job that accepts a value raises `Accepted` once constructed
(`accepting`), so nothing trains and every miss is listed at once.
"""

from __future__ import annotations

import dataclasses
import json
import typing

import keras
import keras_hub
import pytest
from hf_checkpoints import save_checkpoint

from theseus import cli
from theseus.config import ConfigError, build, collect, field, resolve
from theseus.experiments import runs
from theseus.model.models import GPT, Llama, MoE
from theseus.training import checkpoint as ckpt

MISSING = "{tmp}/no/such/path"
PATHS = {
    "data/source",
    "data/tokenizer",
    "evaluation/checkpoint",
    "finetune/init_from",
    "architecture/huggingface/model",
}
"""String keys that name a file or folder: a missing path is invalid."""
SPECIFIC: dict[str, list] = {
    "architecture/n_head": [3],  # does not divide n_embd=128
    "architecture/n_embd": [30],  # not divisible by n_head=4
    "architecture/vocab_size": [100],  # fewer rows than the byte tokenizer's tokens
    "architecture/dropout": [1.0],
    "architecture/activation": ["bogus"],
    "architecture/head_dim": [3],  # rotary positions need an even width
    "architecture/n_kv_head": [3],  # does not divide n_head=4
    "architecture/position": [],
    "training/tokens": [100],  # less than one step
    "training/micro_batch_size": [3],  # does not divide batch_size=16
    "training/loss_chunk": [-1, "bogus"],
    "optimization/warmup": [1.5, 10_000],
    "optimization/decay": [1.5],
    "optimization/beta_1": [1.0],
    "optimization/beta_2": [1.0],
    "optimization/final_lr_fraction": [1.5],
    "optimization/schedule": ["bogus"],
    "optimization/decay_shape": ["bogus"],
    "data/validation_fraction": [1.0],
    "data/mixture": [[{"source": "embedded"}], [{"source": "embedded", "weight": 0}]],
    "evaluation/tasks": [["bogus"]],
    "logging/evaluations": [["bogus"]],
    "grpo/reward": ["bogus"],  # none of exact_match, regex:PATTERN, MODULE:FUNCTION
    "finetune/trainable": [["("]],  # not a regular expression
    "topology/strategy": ["tp"],  # with shard=1
    "topology/shard": [3],  # with strategy dp
    "topology/devices": [1000],  # more than there are
}
"""Invalid values for a key beyond the generic ones (int: 0 and -1, float: -1.0, a path: missing)."""
ZERO_IS_VALID = {
    "training/seed",
    "logging/keep_checkpoints",
    "logging/keep_every",
    "topology/devices",
    "finetune/train_last_blocks",
    "tokenize/workers",
    "evaluation/tokens",
    "optimization/warmup",
    "optimization/decay",
    "architecture/n_embd_shared",
}
SKIPPED = {"topology/backend", "topology/coordinator", "topology/process_id", "data/tfds_data_dir"}
"""Keys walked elsewhere (tests/test_cli.py, the multi-host tests) or read only with another key
(`data/tfds_data_dir` with a tfds: source; `process_id` with a coordinator)."""


class Accepted(Exception):
    """Raised in place of writing the run folder: the job took the value."""


def invalid_values(key: str, tp) -> list:
    """Values of `tp` (a field's type) that key `key` must refuse."""
    found = list(SPECIFIC.get(key, []))
    if key in PATHS:
        return found + [MISSING]
    kinds = set(typing.get_args(tp)) or {tp}
    if bool in kinds or key in SKIPPED:
        return found
    if int in kinds:
        found += ([] if key in ZERO_IS_VALID else [0]) + [-1]
    elif float in kinds:
        found += [-1.0]
    return found


def text(value) -> str:
    """A value as the command line gives it (`key=value`: YAML, of which JSON is a part)."""
    return value if isinstance(value, str) else json.dumps(value)


def native_run(run, family, model_class):
    """A run folder of a native family's default pretraining with a step-1 checkpoint."""
    fields, values = runs.configure(f"{family}/train/pretrain", {}, require=True)
    runs.prepare_run_dir(run, f"{family}/train/pretrain", fields, values)
    model = build(model_class, values)
    model.build((None, values["architecture/block_size"]))
    model.compile(optimizer="adamw")  # as a run's model is when it is checkpointed
    ckpt.save(run / "checkpoints", model, {"step": 1})
    keras.backend.clear_session()
    return run


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A GPT run with a checkpoint (what fine-tuning and evaluation start from) and a tiny
    Llama folder in Hugging Face format (the five HF families share one config table)."""
    root = tmp_path_factory.mktemp("sources")
    made = {family: native_run(root / f"{family}-run", family, model) for family, model in (("gpt", GPT), ("moe", MoE))}
    pairs = root / "pairs.jsonl"  # preference pairs for the train/dpo jobs
    pairs.write_text(
        "".join(json.dumps({"prompt": f"{i}=", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(200))
    )
    prompts = root / "prompts.jsonl"  # prompts with answers for the train/grpo jobs
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(20)))
    preset = root / "keras-hub-gpt2"  # a keras-hub preset folder for the keras_hub jobs
    backbone = dict(num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=256)
    keras_hub.models.GPT2Backbone(vocabulary_size=320, **backbone).save_to_preset(str(preset))
    keras.backend.clear_session()
    llama = save_checkpoint(root / "llama", "llama")
    return {**made, "llama": llama, "pairs": pairs, "prompts": prompts, "keras_hub": preset}


def representatives() -> list[str]:
    """One job key per distinct config table (a Llama one where the HF families share it)."""
    chosen: dict[frozenset, str] = {}
    for key, job in sorted(runs.jobs().items(), key=lambda item: not item[0].startswith("llama/")):
        chosen.setdefault(frozenset(runs.table(job)), key)
    return sorted(chosen.values())


def valid(key: str, folders) -> dict:
    """Overrides that make job `key`'s defaults a config it accepts."""
    if key.endswith("/train/grpo"):
        return {**valid(key.replace("/grpo", "/finetune"), folders), "data/source": str(folders["prompts"])}
    if key.endswith("/train/dpo"):
        return {**valid(key.replace("/dpo", "/finetune"), folders), "data/source": str(folders["pairs"])}
    if key.startswith("llama/"):
        return {"architecture/huggingface/model": str(folders["llama"])}
    if key.startswith("keras_hub/"):
        return {"architecture/keras_hub/preset": str(folders["keras_hub"]), "data/tokenizer": "byte"}
    family = key.split("/")[0]
    if key == f"{family}/train/finetune" and family in ("gpt", "moe"):
        return {"finetune/init_from": str(folders[family])}
    if key == f"{family}/eval/evaluate" and family in ("gpt", "moe"):
        return {"evaluation/checkpoint": str(folders[family])}
    return {}


def accepting(job_class):
    """`runs.job_class` whose jobs raise `Accepted` once constructed: nothing trains or locks."""

    def patched(key: str) -> type:
        cls = job_class(key)

        def __init__(self, *args, **kwargs):
            cls.__init__(self, *args, **kwargs)
            raise Accepted

        return type(cls.__name__, (cls,), {"__init__": __init__})

    return patched


def attempt(config, out, override: str | None, capsys) -> tuple[int | str, list[str]]:
    """Run the job of `config` (plus `override`) as `theseus run` does: its exit code
    (`"accepted"` when its constructor took the config) and its stderr lines."""
    try:
        code = cli.main(["run", "dev", str(config), str(out), *([override] if override else [])])
    except Accepted:
        code = "accepted"
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def test_every_invalid_value_is_refused_before_the_run_folder(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "job_class", accepting(runs.job_class))
    out, missing = tmp_path / "runs", MISSING.format(tmp=tmp_path)
    keys = values = 0
    walked: set[tuple[str, type, str]] = set()  # a key declared by one class, in one kind of job, once
    wrong = []
    for key in representatives():
        fields, base = runs.configure(key, valid(key, folders), require=True)
        config = tmp_path / f"{key.replace('/', '-')}.yaml"
        config.write_text(runs.config_text(key, fields, base))
        assert attempt(config, out, None, capsys)[0] == "accepted", f"{key} refuses its valid config"
        for name, f in fields.items():
            bad = [v.format(tmp=tmp_path) if v == MISSING else v for v in invalid_values(name, f.type)]
            kind = key.split("/", 1)[1]  # train/pretrain, train/finetune, eval/evaluate or tokenize
            if not bad or (name, f.owner, kind) in walked:
                continue
            walked.add((name, f.owner, kind))
            keys, values = keys + 1, values + len(bad)
            for value in bad:
                code, err = attempt(config, out, f"{name}={text(value)}", capsys)
                one_line = code == 2 and len(err) == 1 and err[0].startswith("theseus: error: ")
                if not one_line or "Traceback" in "\n".join(err) or out.exists():
                    wrong.append(f"{key} {name}={value!r}: exit {code}, stderr {err[-3:]}")
    print(f"walked {keys} keys, tried {values} invalid values: {len(wrong)} not refused")
    assert not wrong, "\n".join(wrong)
    assert keys >= 100 and values >= 160, (keys, values)  # the walk cannot silently shrink
    assert missing not in {str(p) for p in tmp_path.rglob("*")}


def test_the_issue_example_is_one_line_exit_2_and_no_run_folder(recipe, tmp_path):
    result = recipe("gpt/train/pretrain", "--architecture.n_head=3", "--out", tmp_path / "runs")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "theseus: error: architecture: n_embd=128 is not divisible by n_head=3"
    ]
    assert not (tmp_path / "runs").exists()


@dataclasses.dataclass
class Section:
    beta: float = field("section/beta", default=0.9, bounds="[0, 1)")
    width: int | None = field("section/width", default=None, bounds=">= 1")


def test_bounds_name_the_key_and_let_null_through():
    table = collect([Section])
    with pytest.raises(ConfigError, match=r"^section/beta must be in \[0, 1\), got 1.0$"):
        resolve(table, {}, {"section/beta": "1.0"})
    with pytest.raises(ConfigError, match="^section/width must be >= 1, got 0$"):
        resolve(table, {}, {"section/width": "0"})
    assert resolve(table, {}, {"section/width": "null", "section/beta": "0"}) == {
        "section/beta": 0.0,
        "section/width": None,
    }
    with pytest.raises(ValueError, match="must look like"):
        field("section/x", default=1, bounds="~ 1")


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        (GPT, {"n_layer": 0}, "architecture/n_layer must be >= 1, got 0"),
        (GPT, {"dropout": -0.1}, r"architecture/dropout must be in \[0, 1\), got -0.1"),
        (GPT, {"n_head": 3}, "n_embd=128 is not divisible by n_head=3"),
        (GPT, {"position": "rope", "n_head": 128}, "rotary positions need an even head width"),
        (Llama, {"head_dim": 3}, "rotary positions need an even head width"),
        (Llama, {"n_kv_head": 3}, r"n_head \(4\) must be a multiple of n_kv_head \(3\)"),
        (Llama, {"vocab_size": 0}, "architecture/vocab_size must be >= 1, got 0"),
    ],
)
def test_a_model_constructor_refuses_what_it_cannot_build(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(**kwargs).build((None, 8))
