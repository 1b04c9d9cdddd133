import keras
import pytest
from support import needs_jax

from theseus.config import field
from theseus.model.axes import Axes
from theseus.model.models import GPT
from theseus.model.module import Module, ShardingError


def tiny_gpt(**kwargs):
    model = GPT(**{"vocab_size": 64, "block_size": 16, "n_layer": 1, "n_head": 4, "n_embd": 32, **kwargs})
    model.build((None, 16))
    return model


def test_fields_are_constructor_arguments_and_config():
    class Toy(Module):
        width: int = field("architecture/width", default=8)
        name_id: str = field("architecture/huggingface/model")

    toy = Toy(name_id="x", width=4, name="toy")
    assert (toy.width, toy.name_id, toy.name) == (4, "x", "toy")
    assert toy.get_config()["width"] == 4 and toy.get_config()["name_id"] == "x"
    with pytest.raises(TypeError, match="needs `name_id` \\(config key 'architecture/huggingface/model'\\)"):
        Toy()


def test_every_gpt_weight_declares_logical_axes_of_its_rank():
    model = tiny_gpt(tie_embeddings=False)
    axes = model.logical_axes()
    assert len(axes) == len(model.weights) > 0
    for variable in model.weights:
        assert axes[variable.path] is not None, variable.path
        assert len(axes[variable.path]) == len(variable.shape)


@needs_jax()
def test_layout_map_matches_gpt_rules():
    model = tiny_gpt()
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    layout_map = model.layout_map(mesh)
    expected_by_suffix = {
        "wte/embeddings": (None, None),
        "attn/query/kernel": (None, "shard"),
        "attn/key/kernel": (None, "shard"),
        "attn/output/kernel": ("shard", None),
        "attn/output/bias": (None,),
        "mlp/up/kernel": (None, "shard"),
        "mlp/up/bias": ("shard",),
        "mlp/down/kernel": ("shard", None),
        "ln_1/gamma": (None,),
    }
    for suffix, layout in expected_by_suffix.items():
        paths = [v.path for v in model.weights if v.path.endswith(suffix)]
        assert paths, suffix
        for path in paths:
            assert tuple(layout_map[path].axes) == layout, path


def test_sharded_build_places_every_weight_as_the_map_says():
    """A real build under ModelParallel on 8 virtual devices: each variable's sharding spec."""
    if keras.backend.backend() != "jax":
        pytest.skip("keras.distribution shards on JAX only")
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    layout_map = tiny_gpt().layout_map(mesh)
    with keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch").scope():
        model = tiny_gpt()
    for variable in model.weights:
        spec = tuple(variable.value.sharding.spec)
        want = tuple(layout_map[variable.path].axes)
        assert spec + (None,) * (len(want) - len(spec)) == want, variable.path
    up = next(v for v in model.weights if v.path.endswith("mlp/up/kernel"))
    shard_shape = up.value.addressable_shards[0].data.shape
    assert shard_shape == (32, 128 // 4)


@needs_jax()
def test_strict_layout_reports_weights_no_rule_covers():
    class Plain(Module):
        def build(self, input_shape):
            self.w = self.add_weight(name="w", shape=(4, 4))  # no logical axes
            self.layers_w = self.add_weight(name="layers_w", shape=(2, 4), axes=(Axes.N_LAYER, Axes.N_EMBD))
            self.v = self.add_weight(name="v", shape=(4,), axes=(Axes.N_EMBD,))

        def call(self, x):
            return x @ self.w

    layer = Plain(name="plain")
    layer.build((None, 4))
    rules = [("n_embd", "batch")]
    assert layer.uncovered(rules) == {"plain/w": None, "plain/layers_w": (Axes.N_LAYER, Axes.N_EMBD)}
    mesh = keras.distribution.DeviceMesh((4,), ("batch",), keras.distribution.list_devices()[:4])
    layout_map = layer.layout_map(mesh, rules)  # not strict: replicated where no rule says otherwise
    assert tuple(layout_map["plain/w"].axes) == (None, None)
    assert tuple(layout_map["plain/layers_w"].axes) == (None, "batch")
    with pytest.raises(ShardingError, match="2 weights are covered by no sharding rule.*plain/w None, plain/layers_w"):
        layer.layout_map(mesh, rules, strict=True)
    # an explicit "replicate" rule is a decision, so it covers its axis
    assert layer.uncovered([("n_embd", "batch"), ("n_layer", None)]) == {"plain/w": None}


def test_weight_with_wrong_number_of_axes_is_refused():
    class Wrong(Module):
        def build(self, input_shape):
            self.w = self.add_weight(name="w", shape=(4, 4), axes=(Axes.N_EMBD,))

    with pytest.raises(ShardingError, match="shape \\(4, 4\\) but 1 logical axes"):
        Wrong(name="wrong").build((None, 4))
