"""The tutorial (docs/tutorial.md), step by step and verbatim, in a copy of the package:
the user's files are written into the copy and the real `theseus` command runs on it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hf_checkpoints import VOCAB, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "tutorial.md"

# The tutorial's code, exactly as users already follow it.
MY_MODEL = """from typing import Any, Optional

from theseus.base.axis import Axis
from theseus.config import field
from theseus.model.axes import Axes
from theseus.model.huggingface import HFCompat, LogicalAxes


class MyHFModel(HFCompat):
    id: str = field("architecture/huggingface/model")

    @property
    def sharding(self) -> list[tuple[str, Optional[Any]]]:
        return [
            (Axes.VOCAB.value, None),
            (Axes.BLOCK_SIZE.value, None),
            (Axes.N_EMBD.value, None),
            (Axes.N_EMBD_FF.value, Axis.SHARD),
            (Axes.N_EMBD_OUT.value, Axis.SHARD),
            (Axes.N_ATTN.value, Axis.SHARD),
        ]

    @classmethod
    def axes(cls, x: str) -> Optional[LogicalAxes]:
        # map parameter name patterns to logical axes
        return None
"""
EXPORT = "from theseus.model.models.my_model import MyHFModel\n"
EXPERIMENT = """import optax

from theseus.training.huggingface import HFTrainer, HFTrainerConfig
from theseus.evaluation.huggingface import HFEvaluator
from theseus.model.models import MyHFModel


class EvaluateMyModel(HFEvaluator[MyHFModel]):
    MODEL = MyHFModel


class PretrainMyModel(HFTrainer[MyHFModel]):
    MODEL = MyHFModel
    CONFIG = HFTrainerConfig

    @classmethod
    def schedule(cls) -> optax._src.base.Schedule:
        return "wsd"
"""
REGISTER = """from theseus.experiments.my_model import PretrainMyModel

JOBS["my_model/train/pretrain"] = PretrainMyModel
"""
REGISTER_EVALUATION = """from theseus.experiments.my_model import EvaluateMyModel

JOBS["my_model/eval/evaluate"] = EvaluateMyModel
"""
SMALL = [
    "training.tokens=6144",
    "training.batch_size=8",
    "architecture.block_size=32",
    "optimization.lr=0.01",
    "logging.validation_interval=12",
    "logging.validation_batches=2",
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.peak_flops=1e12",
]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_doc_shows_the_tutorial_code_verbatim():
    blocks = python_blocks(DOC.read_text())
    for code in (MY_MODEL, EXPORT, EXPERIMENT, REGISTER, REGISTER_EVALUATION):
        assert code in blocks, code[:60]
    assert "theseus configure my_model/train/pretrain my_model.yaml" in DOC.read_text()
    assert "theseus run my-model-dev my_model.yaml /tmp/theseus" in DOC.read_text()


@pytest.mark.slow
def test_the_tutorial_end_to_end_through_the_cli(tmp_path, theseus_cli):
    # A copy of the package, edited as the tutorial says; the real tree is never touched.
    package = tmp_path / "src" / "theseus"
    shutil.copytree(REPO / "theseus", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "model" / "models" / "my_model.py").write_text(MY_MODEL)  # step 1
    with open(package / "model" / "models" / "__init__.py", "a") as f:  # step 2
        f.write("\n" + EXPORT)
    (package / "experiments" / "my_model.py").write_text(EXPERIMENT)  # step 3
    with open(package / "experiments" / "__init__.py", "a") as f:  # step 4
        f.write("\n" + REGISTER + "\n" + REGISTER_EVALUATION)

    checkpoint = save_checkpoint(tmp_path / "my-checkpoint", "llama")  # config.json, weights, tokenizer
    env = {"PYTHONPATH": str(tmp_path / "src"), "XLA_FLAGS": ""}  # the copy, on a one-device laptop
    work = tmp_path / "work"
    work.mkdir()

    def cli(*args, **kwargs):
        return theseus_cli(*args, cwd=work, env=env, **kwargs)

    # step 5
    jobs = cli("jobs", check=True).stdout.splitlines()
    assert [line.split()[0] for line in jobs if "my_model" in line] == [
        "my_model/eval/evaluate",
        "my_model/train/pretrain",
    ]
    # the edited copy is what runs, and its new module may be imported first, as a script would
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "from theseus.model.huggingface import HFCompat; import theseus; print(theseus.__file__)",
        ],
        cwd=work,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(package / "__init__.py"), where.stderr[-2000:]
    cli("configure", "my_model/train/pretrain", "my_model.yaml", check=True)
    config = (work / "my_model.yaml").read_text()
    assert re.search(r"^architecture:\n(  .*\n)*  huggingface:\n    model: \?\?\?", config, flags=re.M), config
    assert "init: random" in config and "tokenizer: auto" in config

    unset = cli("run", "my-model-dev", "my_model.yaml", tmp_path / "theseus", *SMALL)
    assert unset.returncode == 2
    assert unset.stderr.strip() == (
        "theseus: error: config key 'architecture/huggingface/model' is required but not set (it is ???)"
    )
    assert not (tmp_path / "theseus").exists()

    (work / "my_model.yaml").write_text(config.replace("model: ???", f"model: {checkpoint}"))
    cli("run", "my-model-dev", "my_model.yaml", tmp_path / "theseus", *SMALL, check=True)
    run = tmp_path / "theseus" / "my-model-dev"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 12, 24]
    assert val[0] == pytest.approx(np.log(VOCAB), abs=0.5)  # pretraining: random weights, not the checkpoint's
    assert val[-1] < val[0] - 1.0, val

    # the trained model, in Hugging Face format, as transformers loads it...
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(run / "hf"), output_loading_info=True)
    assert not any(info.values()), info
    # ...and evaluated by the tutorial's evaluator: its perplexity is the run's last validation
    cli(
        "configure",
        "my_model/eval/evaluate",
        "eval.yaml",
        f"architecture.huggingface.model={run / 'hf'}",
        "architecture.block_size=32",
        "evaluation.tokens=512",
        check=True,
    )
    cli("run", "my-model-eval", "eval.yaml", tmp_path / "theseus", check=True)
    results = json.loads((tmp_path / "theseus" / "my-model-eval" / "results.json").read_text())["results"]
    assert results["perplexity"]["tokens"] == 512
    assert results["perplexity"]["nll"] == pytest.approx(val[-1], rel=1e-4)
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros((1, 4), dtype=torch.long)).logits).all()
