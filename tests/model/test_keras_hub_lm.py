"""`KerasHubLM`: keras-hub backbones as theseus causal LMs, and the one layer table that shards them."""

import keras
import numpy as np
import pytest
from support import needs_jax

from theseus.base.mesh import Topology
from theseus.base.sharding import build_abstractly
from theseus.config import ConfigError
from theseus.generation import Generator
from theseus.model.keras_hub import KerasHubLM
from theseus.model.models.causal_lm import CausalLM

SIZES = "vocabulary_size: 96, num_layers: 1, hidden_dim: 32, intermediate_dim: 64"
BACKBONES = {
    "GemmaBackbone": "num_query_heads: 2, num_key_value_heads: 2, head_dim: 16",
    "Gemma3Backbone": "image_size: null, num_query_heads: 2, num_key_value_heads: 2, head_dim: 16",
    "Phi3Backbone": "num_query_heads: 2, num_key_value_heads: 2",
    "FalconBackbone": "num_attention_heads: 2",
    "OPTBackbone": "num_heads: 2, max_sequence_length: 64",
    "BloomBackbone": "num_heads: 2",
    "GPT2Backbone": "num_heads: 2, max_sequence_length: 64",
    "GPTNeoXBackbone": "num_heads: 2, max_sequence_length: 64",
    "LlamaBackbone": "num_query_heads: 2, num_key_value_heads: 2",
    "MistralBackbone": "num_query_heads: 2, num_key_value_heads: 2",
    "Qwen3Backbone": "num_query_heads: 2, num_key_value_heads: 2, head_dim: 16",
}


def model(backbone, extra=""):
    return KerasHubLM(backbone_name=backbone, backbone_config="{" + f"{SIZES}, {BACKBONES.get(backbone, extra)}" + "}")


def mesh_rules():
    topology = Topology(strategy="fsdp+tp", shard=2, devices=8)
    return topology, topology.mesh()


@needs_jax()
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_weight_of_a_family_is_covered_by_the_layer_table_and_shards(backbone):
    built = build_abstractly(lambda: model(backbone))  # no memory
    for strategy, shard, splits in (("tp", 2, {"shard"}), ("fsdp", 1, {"batch"}), ("fsdp+tp", 2, {"batch", "shard"})):
        topology = Topology(strategy=strategy, shard=shard, devices=8)
        layouts = built.layout_map(topology.mesh(), topology.rules(built), strict=True)  # no weight uncovered
        for path, layout in layouts._layout_map.items():
            if path.endswith("/kernel") and len(layout.axes) >= 2:  # every matrix is split as the strategy says
                assert {axis for axis in layout.axes if axis} == splits, (strategy, path, layout.axes)


def test_logits_are_float32_and_the_reverse_embedding_of_the_backbone():
    lm = model("GemmaBackbone")
    assert isinstance(lm, CausalLM) and lm.vocab_size == 96
    ids = np.random.default_rng(0).integers(0, 96, (2, 8)).astype("int32")
    logits = keras.ops.convert_to_numpy(lm(ids))
    hidden = lm.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    expected = keras.ops.convert_to_numpy(lm.backbone.token_embedding(hidden, reverse=True))
    assert logits.dtype == np.float32 and logits.shape == (2, 8, 96)
    np.testing.assert_allclose(logits, expected, atol=1e-6)


@needs_jax()
def test_gemma_placements_equal_keras_hub_s_own_layout_map_but_for_the_vocabulary():
    """keras-hub's `GemmaBackbone.get_layout_map` shards like fsdp+tp: every weight it names is
    placed the same, except that theseus keeps the vocabulary replicated (TENSOR_PARALLEL)."""
    import keras_hub

    topology, mesh = mesh_rules()
    ours = topology.layout_map(lambda: model("GemmaBackbone"), mesh)
    theirs = keras_hub.models.GemmaBackbone.get_layout_map(
        mesh, model_parallel_dim_name="shard", data_parallel_dim_name="batch"
    )
    compared = 0
    for path, layout in ours._layout_map.items():
        other = theirs[path]
        if other is None:  # keras-hub replicates the norms; theseus's FSDP splits them too
            assert "norm" in path, path
            continue
        expected = tuple(other.axes)
        if path == "token_embedding/embeddings":
            expected = (None, *expected[1:])
        assert tuple(layout.axes) == expected, path
        compared += 1
    assert compared == 8  # the embedding, q, k, v, output, two gates and the down projection


@needs_jax()
def test_a_weight_the_table_does_not_cover_is_named_under_strict():
    topology = Topology(strategy="tp", shard=2, devices=8, strict=True)
    mixtral = "num_query_heads: 2, num_key_value_heads: 2, num_experts: 2"
    with pytest.raises(ConfigError, match="expert_feedforward_gate_dense"):
        topology.layout_map(lambda: model("MixtralBackbone", mixtral), topology.mesh())


def test_exactly_one_of_preset_and_backbone():
    with pytest.raises(ConfigError, match="exactly one of architecture/keras_hub/preset"):
        KerasHubLM()
    with pytest.raises(ConfigError, match="no keras-hub backbone"):
        KerasHubLM(backbone_name="NoSuchBackbone")


def test_greedy_generation_of_left_padded_prompts_equals_each_prompt_alone():
    lm = model("GemmaBackbone")  # rotary positions: a row shifted by its padding attends the same
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    together = Generator(lm)(prompts, max_new_tokens=5).tokens
    alone = [Generator(lm)([p], max_new_tokens=5).tokens[0] for p in prompts]
    assert together == alone
    ids = list(prompts[0])
    for _ in range(5):  # and each token is the argmax of the full forward pass
        ids.append(int(np.argmax(keras.ops.convert_to_numpy(lm(np.array([ids], "int32")))[0, -1])))
    assert list(together[0]) == ids[len(prompts[0]) :]
