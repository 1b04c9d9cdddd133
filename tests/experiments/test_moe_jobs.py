"""The MoE jobs on 8 virtual CPU devices: expert parallelism splits the experts (no device holds
them all, each holds 1/shard of their bytes) and trains to the losses of one device."""

import json
import math

import numpy as np
import pytest
from support import needs_jax

from theseus.base.mesh import check_placement
from theseus.config import ConfigError
from theseus.experiments import JOBS, runs

PretrainGPT = JOBS["gpt/train/pretrain"]
PretrainMoE = JOBS["moe/train/pretrain"]
EvaluateMoE = JOBS["moe/eval/evaluate"]

pytestmark = needs_jax()

TINY = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 4,
    "architecture/n_embd_ff": 32,
    "architecture/n_experts": 8,
    "architecture/top_k": 2,
    "architecture/capacity_factor": 2.0,
    "architecture/block_size": 32,
    "training/batch_size": 8,
    "training/tokens": 10 * 8 * 32,
    "optimization/lr": 3e-3,
    "optimization/warmup": 2,
    "logging/log_interval": 1,
    "logging/validation_interval": 10,
    "logging/validation_batches": 1,
    "logging/checkpoint_interval": 100,
    "logging/progress_bar": False,
    "logging/plot": False,
}
EXPERT_PARALLEL = {"ep 1x8": ("ep", 8), "fsdp+ep 2x4": ("fsdp+ep", 4)}  # name: (strategy, shard)


def values(**overrides):
    return runs.configure("moe/train/pretrain", {**TINY, **overrides}, require=True)[1]


def spec_of(array):
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (array.ndim - len(spec))


@pytest.mark.parametrize("name", EXPERT_PARALLEL)
def test_no_device_holds_all_experts_and_expert_bytes_fall_by_the_expert_axis(name):
    strategy, shard = EXPERT_PARALLEL[name]
    job = PretrainMoE(values(**{"topology/strategy": strategy, "topology/shard": shard}))
    with job.distribution().scope():
        model = job.build_model()
    check_placement(model)
    batch = 8 // shard
    experts = [v for v in model.weights if "/expert_" in v.path]
    assert len(experts) == 3
    for variable in experts:
        fsdp = "batch" if strategy == "fsdp+ep" else None
        want = ("shard", fsdp, None) if variable.path.endswith(("gate", "up")) else ("shard", None, fsdp)
        assert spec_of(variable.value) == want, variable.path
        full = math.prod(variable.shape) * 4
        shards = variable.value.addressable_shards
        assert len(shards) == 8
        for piece in shards:  # each device: 8 / shard experts of 8, and 1/batch of their width under fsdp
            assert piece.data.shape[0] == 8 // shard < 8
            assert piece.data.nbytes * shard * (batch if fsdp else 1) == full, variable.path
    others = [v for v in model.weights if "/expert_" not in v.path and v.path.endswith("kernel")]
    assert all("shard" not in spec_of(v.value) for v in others)  # expert parallelism splits experts only


def test_expert_parallelism_needs_a_model_with_experts():
    gpt = runs.configure("gpt/train/pretrain", {"topology/strategy": "ep", "topology/shard": 8}, require=True)[1]
    with pytest.raises(ConfigError, match="topology/strategy=ep, shard=8: expert parallelism needs a model with"):
        PretrainGPT(gpt).distribution()
    with pytest.raises(ConfigError, match="topology/strategy=ep splits weights over the shard axis"):
        PretrainMoE(values(**{"topology/strategy": "ep"})).distribution()


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r]), [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    fields, config = runs.configure("moe/train/pretrain", {**TINY, "topology/devices": 1}, require=True)
    out_dir = tmp_path_factory.mktemp("runs")
    runs.launch("moe/train/pretrain", fields, config, out_dir, "one_device")  # a run folder, as the CLI makes
    return out_dir / "one_device"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERT_PARALLEL)
def test_ten_steps_under_expert_parallelism_match_one_device(name, one_device_run, tmp_path):
    """Same routing, same dropped pairs (the capacity is over the global batch), same losses
    (auxiliary losses included) to float32 reduction order: rtol 1e-4."""
    strategy, shard = EXPERT_PARALLEL[name]
    PretrainMoE(values(**{"topology/strategy": strategy, "topology/shard": shard}), tmp_path).run()
    got, _ = losses(tmp_path)
    want, _ = losses(one_device_run)
    assert len(got) == len(want) == 10
    assert want[-1] < want[0] - 0.5  # it trains
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)


@pytest.mark.slow
def test_evaluate_scores_the_runs_checkpoint_as_its_last_validation(one_device_run, tmp_path):
    evaluation = {"evaluation/checkpoint": str(one_device_run), "evaluation/tasks": ["perplexity"]}
    EvaluateMoE(runs.configure("moe/eval/evaluate", evaluation, require=True)[1], tmp_path).run()
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    _, val_losses = losses(one_device_run)
    assert results["perplexity"]["nll"] == pytest.approx(val_losses[-1], rel=1e-5)


@pytest.mark.slow
def test_finetune_continues_the_run_and_exports_a_mixtral_folder(one_device_run, tmp_path):
    overrides = {**TINY, "training/tokens": 2 * 8 * 32, "finetune/init_from": str(one_device_run)}
    fields, config = runs.configure("moe/train/finetune", {**overrides, "topology/devices": 1}, require=True)
    runs.launch("moe/train/finetune", fields, config, tmp_path, "ft")
    exported = json.loads((tmp_path / "ft" / "hf" / "config.json").read_text())
    assert exported["model_type"] == "mixtral" and exported["num_local_experts"] == 8
    assert exported["num_experts_per_tok"] == 2
