"""Mixtral, Qwen2-MoE and Qwen3-MoE through HFCompat against real `transformers` models: logits,
greedy generation, bitwise export (experts spread over shards and over devices included), Qwen's
dense layers, native `MoE` export and refusals. Checkpoints are tiny random ones made here with
`save_pretrained` (`hf_checkpoints.MOE_CONFIGS`)."""

import json
import re

import keras
import numpy as np
import pytest
import torch
import transformers
from hf_checkpoints import MOE_FAMILIES, VOCAB, hf_model, reference_logits, save_checkpoint, token_batch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from support import needs_jax

from theseus.base.mesh import Strategy, strategy_rules
from theseus.config import ConfigError
from theseus.experiments import JOBS
from theseus.generation import Generator
from theseus.model.axes import Axes
from theseus.model.huggingface import HFCompat, save_hf
from theseus.model.models import MoE

PROMPTS = [[17, 250, 3, 99, 42, 7, 130], [5, 300], [64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
STORED = {  # how transformers 5 writes layer 0's experts: one tensor per expert and projection
    "mixtral": "model.layers.0.block_sparse_moe.experts.3.w2.weight",
    "qwen2_moe": "model.layers.0.mlp.experts.3.down_proj.weight",
    "qwen3_moe": "model.layers.0.mlp.experts.5.down_proj.weight",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {family: save_checkpoint(root / family, family) for family in MOE_FAMILIES}


def logits(model, ids, mask=None):
    return keras.ops.convert_to_numpy(model(ids) if mask is None else model(ids, padding_mask=mask))


def tensors(folder):
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found


def loads_cleanly(folder):
    """`folder` in `transformers`, which must find every weight and no other."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_logits_match_transformers_with_and_without_padding(checkpoints, family):
    assert STORED[family] in tensors(checkpoints[family])  # the per-expert layout is what is read
    model = HFCompat(id=str(checkpoints[family]))
    assert isinstance(model.architecture, MoE) and model.architecture.dense_layers == []
    assert model.uncovered() == {} and model.expert_axis == Axes.EXPERT.value
    reference = hf_model(family)
    ids, mask = token_batch()
    np.testing.assert_allclose(logits(model, ids), reference_logits(reference, ids), atol=1e-4, rtol=0)
    got, want = logits(model, ids, mask), reference_logits(reference, ids, mask)
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_round_trip_is_bitwise_and_loads_in_transformers(checkpoints, family, tmp_path):
    source = checkpoints[family]
    HFCompat(id=str(source)).save_pretrained(tmp_path / "out")
    before, after = tensors(source), tensors(tmp_path / "out")
    assert set(before) == set(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    config, written = (json.loads((f / "config.json").read_text()) for f in (source, tmp_path / "out"))
    routing = [k for k in config if re.search("expert|router|moe|topk|sparse|mlp_only|intermediate", k)]
    assert len(routing) >= 6 and {k: written[k] for k in routing} == {k: config[k] for k in routing}
    ids, _ = token_batch()
    np.testing.assert_array_equal(
        reference_logits(loads_cleanly(tmp_path / "out"), ids), reference_logits(loads_cleanly(source), ids)
    )


def test_experts_spread_over_several_shards_load_and_export(checkpoints, tmp_path):
    """A layer's experts in turn in two files (as the Hub's Mixtral shards split them; transformers 5
    shards its fused experts whole), and theseus's own export shards them apart too."""
    weights = {k: v.numpy() for k, v in tensors(checkpoints["qwen3_moe"]).items()}
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_bytes((checkpoints["qwen3_moe"] / "config.json").read_bytes())
    files = {name: f"model-0000{i % 2 + 1}-of-00002.safetensors" for i, name in enumerate(sorted(weights))}
    for file in set(files.values()):
        save_file({k: v for k, v in weights.items() if files[k] == file}, str(folder / file), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
    assert len({files[f"model.layers.0.mlp.experts.{e}.up_proj.weight"] for e in range(6)}) == 2
    model = HFCompat(id=str(folder))
    ids, _ = token_batch()
    np.testing.assert_allclose(logits(model, ids), reference_logits(hf_model("qwen3_moe"), ids), atol=1e-4, rtol=0)
    out = save_hf(model, tmp_path / "out", max_shard_size=8_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert (
        set(index) == set(weights)
        and len({index[f"model.layers.1.mlp.experts.{e}.up_proj.weight"] for e in range(6)}) > 1
    )
    assert all(np.array_equal(weights[name], value.numpy()) for name, value in tensors(out).items())


@needs_jax()
def test_expert_parallel_splits_the_experts_and_exports_bitwise(checkpoints, tmp_path):
    """Mixtral's 4 experts over a (2, 4) mesh's `shard` axis: each device holds one expert of each
    projection, the logits are the unsharded ones, and the export gathers every tensor back bitwise."""
    source = checkpoints["mixtral"]
    plain = HFCompat(id=str(source))
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    rules = strategy_rules(Strategy.EP, plain.sharding, plain.fsdp_axis, plain.expert_axis)
    with keras.distribution.ModelParallel(layout_map=plain.layout_map(mesh, rules), batch_dim_name="batch").scope():
        sharded = HFCompat(id=str(source))
        ids, mask = token_batch()
        got = logits(sharded, ids, mask)
    experts = [v for v in sharded.weights if re.search(r"/mlp/expert_(gate|up|down)$", v.path)]
    assert len(experts) == 6 and all(v.value.sharding.spec[0] == "shard" for v in experts)
    assert all(shard.data.shape[0] == 1 for v in experts for shard in v.value.addressable_shards)
    np.testing.assert_allclose(got[mask], logits(plain, ids, mask)[mask], atol=1e-5, rtol=0)
    sharded.save_pretrained(tmp_path / "out")
    before, after = tensors(source), tensors(tmp_path / "out")
    assert set(before) == set(after) and all(torch.equal(before[name], after[name]) for name in before)


def test_axes_of_a_subclass_override_each_experts_tensor_and_keep_the_expert_axis(checkpoints):
    class Overrides(HFCompat):
        @classmethod
        def axes(cls, x: str):
            return (None, Axes.N_EMBD) if re.search(r"experts\.\d+\.w1", x) else None  # stored (hidden, width)

    model = Overrides(id=str(checkpoints["mixtral"]))
    found = {path.split("/", 1)[1]: axes for path, axes in model.logical_axes().items()}
    assert found["moe/block_1/mlp/expert_gate"] == (Axes.EXPERT, Axes.N_EMBD, None)
    assert found["moe/block_1/mlp/expert_up"] == (Axes.EXPERT, Axes.N_EMBD, Axes.N_EMBD_FF)  # the layer's own


@pytest.mark.slow
@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_greedy_generation_equals_transformers(family, tmp_path):
    """theseus runs the prompts as one left-padded batch with its KV cache; transformers each alone."""
    reference = hf_model(family, seed=1)
    reference.save_pretrained(str(tmp_path))
    out = Generator(HFCompat(id=str(tmp_path)))(PROMPTS, max_new_tokens=8)
    for prompt, tokens in zip(PROMPTS, out.tokens):
        with torch.no_grad():
            expected = reference.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        assert tokens == expected
    assert any(len(set(tokens)) > 2 for tokens in out.tokens)  # not a degenerate repetition


@pytest.mark.parametrize(
    "family, settings, dense",
    [
        ("qwen2_moe", dict(mlp_only_layers=[0]), [0]),
        ("qwen3_moe", dict(decoder_sparse_step=2, output_router_logits=True, router_aux_loss_coef=0.02), [0]),
    ],
)
def test_qwen_dense_layers_match_and_round_trip(family, settings, dense, tmp_path):
    reference = hf_model(family, **settings)
    reference.save_pretrained(str(tmp_path / "in"))
    model = HFCompat(id=str(tmp_path / "in"))
    assert model.architecture.dense_layers == dense
    assert model.architecture.aux_loss_weight == settings.get("router_aux_loss_coef", 0.0)
    ids, mask = token_batch()
    np.testing.assert_allclose(
        logits(model, ids, mask)[mask], reference_logits(reference, ids, mask)[mask], atol=1e-4, rtol=0
    )
    model.save_pretrained(tmp_path / "out")
    before, after = tensors(tmp_path / "in"), tensors(tmp_path / "out")
    assert "model.layers.0.mlp.gate_proj.weight" in before and set(before) == set(after)
    assert all(torch.equal(before[name], after[name]) for name in before)
    loads_cleanly(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings, model_type",
    [
        (dict(sliding_window=4), "mixtral"),
        (dict(qkv_bias=True, norm_topk_prob=False, n_embd_shared=48, gated_shared=True), "qwen2_moe"),
        (dict(head_dim=24, qk_norm=True, dense_layers=[1], n_embd_ff=40), "qwen3_moe"),
    ],
    ids=["mixtral", "qwen2_moe", "qwen3_moe"],
)
def test_native_moe_exports_to_the_family_that_expresses_it(settings, model_type, tmp_path):
    keras.utils.set_random_seed(0)
    kw = dict(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, n_experts=4, top_k=2, n_embd_expert=24)
    model = MoE(**kw, **settings)
    ids, mask = token_batch()
    want = logits(model, ids, mask)
    save_hf(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == model_type
    reference = loads_cleanly(tmp_path / "out")
    np.testing.assert_allclose(reference_logits(reference, ids, mask)[mask], want[mask], atol=1e-4, rtol=0)


def test_what_no_family_expresses_is_refused_in_one_line(checkpoints, tmp_path):
    model = MoE(vocab_size=VOCAB, n_layer=1, n_head=4, n_embd=32, n_experts=4, n_embd_shared=16)  # ungated shared
    with pytest.raises(ConfigError, match="MoE matches no Hugging Face family.*mixtral: .*shared expert") as error:
        save_hf(model, tmp_path / "out")
    assert "\n" not in str(error.value) and "llama" not in str(error.value)  # never a dense family: experts lost
    hf_model("mixtral", router_jitter_noise=0.1).save_pretrained(str(tmp_path / "jitter"))
    with pytest.raises(ConfigError, match="router_jitter_noise > 0 is not supported"):
        HFCompat(id=str(tmp_path / "jitter"))


def test_each_family_has_its_jobs():
    for family in MOE_FAMILIES:
        for kind in ("train/pretrain", "train/finetune", "eval/evaluate"):
            assert JOBS[f"{family}/{kind}"].MODEL_TYPES == (family,)
