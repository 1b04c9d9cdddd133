"""The tutorial's non-HF path, as a user writes it: a Module subclass and a BaseTrainer in
a module outside theseus, registered in JOBS, run through the real CLI."""

import json
import re
import textwrap

import pytest

USER_MODULE = '''
from typing import Any, Optional

from keras import ops

from theseus.base.axis import Axis
from theseus.config import field
from theseus.experiments import JOBS
from theseus.model.axes import Axes
from theseus.model.module import Module
from theseus.training import BaseTrainer


class ContextBigram(Module):
    """Logits from the current token's embedding plus the mean of the ones before it."""

    vocab_size: int = field("architecture/vocab_size", default=320)
    n_embd: int = field("architecture/n_embd", default=32)

    @property
    def sharding(self) -> list[tuple[str, Optional[Any]]]:
        return [(Axes.VOCAB.value, None), (Axes.N_EMBD.value, Axis.SHARD)]

    def build(self, input_shape):
        self.embed = self.add_weight(
            name="embed", shape=(self.vocab_size, self.n_embd), initializer="random_normal",
            axes=(Axes.VOCAB, Axes.N_EMBD))
        self.head = self.add_weight(
            name="head", shape=(self.n_embd, self.vocab_size), initializer="random_normal",
            axes=(Axes.N_EMBD, Axes.VOCAB))

    def call(self, token_ids):
        x = ops.take(self.embed, token_ids, axis=0)  # (B, T, C)
        steps = ops.cast(ops.arange(1, ops.shape(x)[1] + 1), x.dtype)[None, :, None]
        context = ops.cumsum(x, axis=1) / steps
        return ops.matmul(x + context, self.head)


class PretrainContextBigram(BaseTrainer[ContextBigram]):
    """Pretrain the context-bigram toy model."""

    MODEL = ContextBigram

    @classmethod
    def schedule(cls):
        return "cosine"


JOBS["my_model/train/pretrain"] = PretrainContextBigram
'''


@pytest.mark.slow
def test_user_module_and_trainer_run_through_the_cli(theseus_cli, tmp_path):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(USER_MODULE))
    env = {"THESEUS_PLUGINS": "my_models", "PYTHONPATH": str(tmp_path)}
    jobs = theseus_cli("jobs", env=env, check=True).stdout
    assert re.search(r"^my_model/train/pretrain +Pretrain the context-bigram toy model\.$", jobs, re.MULTILINE)
    config = tmp_path / "my_model.yaml"
    theseus_cli(
        "configure",
        "my_model/train/pretrain",
        config,
        "architecture.block_size=64",
        "training.batch_size=8",
        "training.tokens=40960",
        "optimization.lr=0.01",
        "logging.validation_interval=40",
        "logging.progress_bar=false",
        env=env,
        check=True,
    )
    assert "n_embd: 32" in config.read_text() and "n_layer" not in config.read_text()
    theseus_cli("run", "toy", config, tmp_path / "runs", env=env, check=True)
    rows = [json.loads(text) for text in (tmp_path / "runs/toy/metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 40, 80]
    assert val[-1] < val[0] - 1.5, val  # bytes are far from uniform: a bigram learns fast
