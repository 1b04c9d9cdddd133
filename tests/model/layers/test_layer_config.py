"""Each layer's `get_config` is its constructor arguments: `from_config` rebuilds the same layer."""

import keras
import pytest

from theseus.model.axes import Axes
from theseus.model.layers import MLP, CausalSelfAttention, Dense, Embedding, GatedMLP, LayerNorm, RMSNorm

LAYERS = [
    Dense(
        8, (Axes.N_EMBD, Axes.N_EMBD_FF), use_bias=False, kernel_initializer=keras.initializers.RandomNormal(stddev=0.1)
    ),
    Embedding(16, 4, axes=(Axes.BLOCK_SIZE, Axes.N_EMBD)),
    CausalSelfAttention(4, 8, 2, qkv_bias=False, qk_norm=True, out_init_std=0.01),
    MLP(16, 64, "relu", use_bias=False),
    GatedMLP(16, 48),
    LayerNorm(1e-3, use_bias=False),
    RMSNorm(1e-5, unit_offset=True, axes=(None,)),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_from_config_rebuilds_the_same_layer(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_config_names_axes_and_serializes_initializers():
    config = LAYERS[0].get_config()
    assert config["axes"] == ["n_embd", "n_embd_ff"] and config["units"] == 8 and config["use_bias"] is False
    assert config["kernel_initializer"]["config"]["stddev"] == 0.1
    assert LAYERS[6].get_config()["axes"] == [None] and LAYERS[2].get_config()["n_kv_head"] == 2
