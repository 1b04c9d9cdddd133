"""Strategies on a real mesh of 8 virtual CPU devices: where every variable lives, what it
costs per device, and that training under each gives the losses of one device."""

import json
import math

import keras
import numpy as np
import pytest

from theseus.base.mesh import Strategy, Topology, check_placement, strategy_rules
from theseus.base.sharding import ShardingError, abstract_build
from theseus.config import ConfigError
from theseus.experiments import JOBS, runs
from theseus.model import models
from theseus.model.models import GPT, CausalLM

PretrainGPT = JOBS["gpt/train/pretrain"]

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution shards on JAX only")

TINY = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 4,
    "architecture/block_size": 32,
    "training/batch_size": 8,
    "training/tokens": 20 * 8 * 32,
    "optimization/lr": 3e-3,
    "optimization/warmup": 2,
    "logging/log_interval": 1,
    "logging/validation_interval": 20,
    "logging/validation_batches": 1,
    "logging/checkpoint_interval": 100,
    "logging/progress_bar": False,
}

STRATEGIES = {  # name: (strategy, devices on the shard axis), on 8 devices
    "dp 8x1": ("dp", 1),
    "tp 2x4": ("tp", 4),
    "tp 4x2": ("tp", 2),
    "fsdp 8x1": ("fsdp", 1),
    "fsdp+tp 4x2": ("fsdp+tp", 2),
}

# Where each GPT weight must go, written out by hand from the rules in docs/sharding.md:
# (tensor parallel, fully sharded, both); data parallel replicates everything.
EXPECTED = {
    "wte/embeddings": ((None, None), (None, "batch"), (None, "batch")),
    "wpe/embeddings": ((None, None), (None, "batch"), (None, "batch")),
    "lm_head": ((None, None), ("batch", None), ("batch", None)),
    "gamma": ((None,), ("batch",), ("batch",)),
    "beta": ((None,), ("batch",), ("batch",)),
    "attn/query/kernel": ((None, "shard"), ("batch", None), ("batch", "shard")),
    "attn/key/kernel": ((None, "shard"), ("batch", None), ("batch", "shard")),
    "attn/value/kernel": ((None, "shard"), ("batch", None), ("batch", "shard")),
    "attn/query/bias": (("shard",), (None,), ("shard",)),
    "attn/key/bias": (("shard",), (None,), ("shard",)),
    "attn/value/bias": (("shard",), (None,), ("shard",)),
    "attn/output/kernel": (("shard", None), (None, "batch"), ("shard", "batch")),
    "attn/output/bias": ((None,), ("batch",), ("batch",)),
    "mlp/up/kernel": ((None, "shard"), ("batch", None), ("batch", "shard")),
    "mlp/up/bias": (("shard",), (None,), ("shard",)),
    "mlp/down/kernel": (("shard", None), (None, "batch"), ("shard", "batch")),
    "mlp/down/bias": ((None,), ("batch",), ("batch",)),
}


def values(**overrides):
    return runs.configure("gpt/train/pretrain", {**TINY, **overrides}, require=True)[1]


def expected_layout(path, rank, strategy):
    suffix = next(s for s in EXPECTED if path.endswith(s))
    column = {"dp": None, "tp": 0, "fsdp": 1, "fsdp+tp": 2}[strategy]
    return (None,) * rank if column is None else EXPECTED[suffix][column]


def spec_of(array):
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (array.ndim - len(spec))


def test_topology_is_a_config_section_defaulting_to_data_parallel_on_every_device():
    fields, defaults = runs.configure("gpt/train/pretrain")
    assert {k: v for k, v in defaults.items() if k.startswith("topology/")} == {
        "topology/strategy": Strategy.DP,
        "topology/shard": 1,
        "topology/devices": 0,
        "topology/strict": False,
        "topology/coordinator": "",
        "topology/num_processes": None,
        "topology/process_id": None,
        "topology/peer_timeout": 180,
        "topology/backend": "auto",
    }
    assert "strategy: dp  # dp, tp, fsdp, fsdp+tp, ep or fsdp+ep" in runs.config_text(
        "gpt/train/pretrain", fields, defaults
    )
    distribution = PretrainGPT(values()).distribution()
    assert isinstance(distribution, keras.distribution.DataParallel)
    assert distribution.device_mesh.shape == (8,) and distribution.auto_shard_dataset is False
    assert PretrainGPT(values(**{"topology/devices": 1})).distribution() is None  # one device: plain Keras


def test_strategies_are_rules_added_to_the_models_own():
    model = GPT(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=32)
    model_rules, fsdp_axis = model.sharding, model.fsdp_axis
    fsdp_rules = [("n_embd", "batch")]  # the residual width, which every large weight has
    assert fsdp_axis == "n_embd"
    assert strategy_rules(Strategy.TP, model_rules, fsdp_axis) == model_rules
    assert strategy_rules(Strategy.FSDP_TP, model_rules, fsdp_axis) == fsdp_rules + model_rules
    replicated = [(axis, None) for axis, _ in model_rules]
    assert strategy_rules(Strategy.DP, model_rules, fsdp_axis) == replicated  # still covering the same axes
    assert strategy_rules(Strategy.FSDP, model_rules, fsdp_axis) == fsdp_rules + replicated


def test_the_model_names_the_axis_fully_sharded_strategies_split():
    class VocabFSDP(GPT):
        @property
        def fsdp_axis(self):
            return "vocab"

    def build():
        model = VocabFSDP(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=32, tie_embeddings=False)
        model.build((None, 16))
        return model

    distribution = Topology(strategy="fsdp").distribution(build)
    assert tuple(distribution.get_tensor_layout("gpt/wte/embeddings").axes) == ("batch", None)
    assert tuple(distribution.get_tensor_layout("gpt/lm_head").axes) == (None, "batch")
    assert tuple(distribution.get_tensor_layout("gpt/block_0/mlp/up/kernel").axes) == (None, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"topology/strategy": "tp"},
            "topology/strategy=tp splits weights over the shard axis: set topology/shard > 1",
        ),
        ({"topology/shard": 2}, "topology/strategy=dp leaves the shard axis unused: set topology/shard=1, or pick tp"),
        (
            {"topology/strategy": "fsdp+tp", "topology/shard": 3},
            "topology/shard=3 does not divide the 8 devices of the mesh",
        ),
        ({"topology/devices": 16}, "topology/devices=16 but only 8 devices are visible"),
        (
            {"topology/strategy": "tp", "topology/shard": 2, "training/batch_size": 6},
            "training/batch_size=6 does not split over the 4 devices of the batch axis (topology: 8 devices, shard=2)",
        ),
        (
            {"training/micro_batch_size": 2},
            "training/micro_batch_size=2 does not split over the 8 devices of the batch axis",
        ),
        (
            {"topology/strategy": "tp", "topology/shard": 8, "architecture/n_embd_ff": 100},
            "topology/strategy=tp, shard=8: weight gpt/block_0/mlp/up/kernel dimension 1 (n_embd_ff, size 100) "
            "does not divide mesh axis shard of size 8",
        ),
        ({"topology/num_processes": 2}, "topology/num_processes=2 needs topology/coordinator (host:port of process 0)"),
        (
            {"topology/coordinator": "127.0.0.1:1234", "topology/num_processes": 2},
            "topology/coordinator=127.0.0.1:1234 needs topology/num_processes and topology/process_id",
        ),
    ],
)
def test_a_topology_that_cannot_work_is_one_config_error_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        PretrainGPT(values(**overrides))


def test_an_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(
        ConfigError, match=r"'topology/strategy' must be one of \['dp', 'tp', 'fsdp', 'fsdp\+tp', 'ep', 'fsdp\+ep'\]"
    ):
        values(**{"topology/strategy": "zero3"})


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_variable_lives_where_the_rules_say_and_shrinks_by_its_degree(name):
    strategy, shard = STRATEGIES[name]
    job = PretrainGPT(
        values(**{"topology/strategy": strategy, "topology/shard": shard, "architecture/tie_embeddings": False})
    )
    distribution = job.distribution()
    mesh = dict(zip(distribution.device_mesh.axis_names, distribution.device_mesh.shape))
    with distribution.scope():
        model = job.build_model()
        job.compile(model, job.build_schedule())
        model.optimizer.build(model.trainable_variables)
    check_placement(model)
    per_device = {}
    for variable in model.weights:
        want = expected_layout(variable.path, len(variable.shape), strategy)
        assert spec_of(variable.value) == want, variable.path
        degree = math.prod(mesh[axis] for axis in want if axis is not None)
        full = math.prod(variable.shape) * 4
        for shard_ in variable.value.addressable_shards:
            assert shard_.data.nbytes * degree == full, variable.path
            per_device[shard_.device] = per_device.get(shard_.device, 0) + shard_.data.nbytes
    # optimizer slots (Adam's m and v) follow their variable
    slots = {v.path: v for v in model.optimizer.variables}
    for variable in model.trainable_weights:
        for slot in ("momentum", "velocity"):
            path = f"{model.optimizer.name}/{variable.path.replace('/', '_')}_{slot}"
            assert spec_of(slots[path].value) == spec_of(variable.value), path
    # every device holds the same share: the whole model divided weight by weight
    want_per_device = sum(
        math.prod(v.shape) * 4 // math.prod(mesh[a] for a in expected_layout(v.path, len(v.shape), strategy) if a)
        for v in model.weights
    )
    assert len(per_device) == 8 and set(per_device.values()) == {want_per_device}
    # the input batch is split over the batch axis
    assert tuple(distribution.get_data_layout((8, 32)).axes) == ("batch", None)


# Every family theseus ships, in the variants that change its set of weights.
FAMILIES = {
    "GPT": [{}, {"tie_embeddings": False, "position": "rope", "bias": False}],
    "Llama": [{"n_kv_head": 2}, {"n_kv_head": 2, "qkv_bias": True, "qk_norm": True, "tie_embeddings": True}],
    "MoE": [{"n_experts": 4}, {"n_experts": 4, "n_embd_shared": 16, "gated_shared": True, "dense_layers": [0]}],
}


def test_every_shipped_family_is_checked_for_coverage():
    shipped = {
        n for n in models.__all__ if isinstance(getattr(models, n), type) and issubclass(getattr(models, n), CausalLM)
    }
    assert shipped - {"CausalLM"} <= set(FAMILIES)


@pytest.mark.parametrize("family, variant", [(f, i) for f in FAMILIES for i in range(len(FAMILIES[f]))])
def test_the_rules_cover_every_weight_of_every_shipped_model(family, variant):
    if family not in models.__all__:
        pytest.skip(f"{family} is not shipped here")

    def build():
        model = getattr(models, family)(
            vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=32, **FAMILIES[family][variant]
        )
        model.build((None, 16))
        return model

    with abstract_build():
        model = build()
    assert model.uncovered() == {}
    for strategy, shard in STRATEGIES.values():
        if strategy == "dp":
            continue
        distribution = Topology(strategy=strategy, shard=shard, strict=True).distribution(build)
        for variable in model.weights:
            layout = distribution.get_tensor_layout(variable.path)
            assert layout is not None and len(layout.axes) == len(variable.shape), variable.path
            if strategy != "tp":  # fully sharded: every matrix and norm has a residual-width dimension
                assert len(variable.shape) == 1 or "batch" in layout.axes, variable.path


def test_a_weight_built_under_another_name_than_its_layout_is_caught():
    job = PretrainGPT(values(**{"topology/strategy": "tp", "topology/shard": 4}))
    with job.distribution().scope():
        model = GPT(name="renamed", n_layer=1, n_embd=32, n_head=4, block_size=32)
        model.build((None, 32))
        with pytest.raises(ShardingError, match="weights are not where the layout map puts them: renamed/"):
            check_placement(model)


def test_strict_topology_refuses_a_model_with_uncovered_weights():
    class PartialGPT(GPT):
        @property
        def sharding(self):
            return [rule for rule in super().sharding if rule[0] != "n_kv"]  # keys, values: no rule

    def build():
        model = PartialGPT(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=32)
        model.build((None, 16))
        return model

    with pytest.raises(
        ConfigError,
        match=r"topology/strategy=tp, shard=2: 4 weights are covered by no sharding rule.*gpt/block_0/attn/key/kernel",
    ):
        Topology(strategy="tp", shard=2, strict=True).distribution(build)
    distribution = Topology(strategy="tp", shard=2).distribution(build)  # not strict: replicated
    assert tuple(distribution.get_tensor_layout("gpt/block_0/attn/key/kernel").axes) == (None, None)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one_device")
    PretrainGPT(values(**{"topology/devices": 1}), run_dir).run()
    return losses(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_twenty_steps_under_each_strategy_match_one_device(name, one_device_losses, tmp_path):
    strategy, shard = STRATEGIES[name]
    PretrainGPT(values(**{"topology/strategy": strategy, "topology/shard": shard}), tmp_path).run()
    got = losses(tmp_path)
    assert len(got) == len(one_device_losses) == 20
    assert one_device_losses[-1] < one_device_losses[0] - 0.5  # it trains
    np.testing.assert_allclose(got, one_device_losses, rtol=1e-4, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_other_backends_refuse_sharding_in_one_line(backend, theseus_cli, tmp_path):
    """(The default topology, one device there, is trained on by tests/backends.)"""
    config = tmp_path / "gpt.yaml"
    fields, defaults = runs.configure("gpt/train/pretrain", TINY)
    config.write_text(runs.config_text("gpt/train/pretrain", fields, defaults))
    refused = theseus_cli(
        "run",
        "tp",
        config,
        tmp_path / "runs",
        "topology.strategy=tp",
        "topology.shard=2",
        env={"KERAS_BACKEND": backend},
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (  # TensorFlow logs a few lines of its own first
        f"theseus: error: topology/strategy=tp needs the JAX backend: Keras {keras.__version__} shards "
        f"variables only on JAX (this run uses {backend}); use strategy dp here"
    )
    assert not (tmp_path / "runs").exists()
