"""Rules -> layouts for any Keras variables that carry `logical_axes`: no model involved."""

import enum

import keras
import numpy as np
import pytest
from support import needs_jax

from theseus.base.axis import Axis
from theseus.base.sharding import ShardingError, abstract_build, layout_map, resolve_layout, uncovered

MESH = {"batch": 2, "shard": 4}


class Names(str, enum.Enum):
    WIDTH = "width"
    HIDDEN = "hidden"


def test_resolve_layout_follows_rules_in_order():
    rules = [("n_embd", None), ("n_embd_ff", Axis.SHARD), ("n_embd_ff", Axis.BATCH), ("vocab", Axis.BATCH)]
    assert resolve_layout(("n_embd", "n_embd_ff"), (32, 128), rules, MESH) == (None, "shard")
    # a mesh axis is used at most once per weight: the second candidate rule applies
    assert resolve_layout(("n_embd_ff", "n_embd_ff"), (8, 8), rules, MESH) == ("shard", "batch")
    assert resolve_layout(("vocab", "n_embd"), (64, 32), rules, MESH) == ("batch", None)
    # a rule may name several mesh axes (e.g. FSDP over batch and shard)
    assert resolve_layout(("n_embd",), (32,), [("n_embd", ("batch", "shard"))], MESH) == (("batch", "shard"),)
    with pytest.raises(ShardingError, match="size 6.*does not divide mesh axis shard of size 4"):
        resolve_layout(("n_embd_ff",), (6,), rules, MESH, "w")


@needs_jax()
def test_layout_map_of_plain_keras_variables_with_logical_axes():
    layer = keras.layers.Layer(name="plain")
    kernel = layer.add_weight(name="kernel", shape=(8, 16))
    kernel.logical_axes = (Names.WIDTH, "hidden")  # a str Enum and a plain str name the same way
    bias = layer.add_weight(name="bias", shape=(16,))
    bias.logical_axes = (Names.HIDDEN,)
    free = layer.add_weight(name="free", shape=(3,))  # no logical axes: replicated
    rules = [("hidden", "shard")]
    assert uncovered([kernel, bias, free], rules) == {"plain/kernel": (Names.WIDTH, "hidden"), "plain/free": None}
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    layouts = layout_map([kernel, bias, free], mesh, rules)
    assert {path: tuple(layouts[path].axes) for path in layouts} == {
        "plain/kernel": (None, "shard"),
        "plain/bias": ("shard",),
        "plain/free": (None,),
    }
    with pytest.raises(ShardingError, match="2 weights are covered by no sharding rule"):
        layout_map([kernel, bias, free], mesh, rules, strict=True)


def test_abstract_build_allocates_nothing_and_keeps_paths_for_the_real_build():
    class Bigram(keras.layers.Layer):
        def build(self, input_shape):
            self.table = self.add_weight(name="table", shape=(64, 64))

        def call(self, ids):
            return keras.ops.take(self.table, ids, axis=0)

    with abstract_build():
        abstract = Bigram()  # named automatically, as a user's module often is
        abstract.build((None, 16))
    assert abstract.table._value is None  # a shape and a path, no value
    real = Bigram()
    real.build((None, 16))
    assert real.table.path == abstract.table.path  # the same automatic name again
    assert tuple(real(np.zeros((1, 16), "int32")).shape) == (1, 16, 64)
    with keras.StatelessScope():  # leaving one initialises every variable still pending...
        pass
    assert abstract.table._value is None  # ...but the abstract ones are no longer pending
    assert Bigram().name != real.name  # outside the abstract build, names stay unique
