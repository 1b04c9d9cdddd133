import numpy as np
import pytest
from keras import ops

from theseus.model.axes import Axes
from theseus.model.layers import GatedMLP, MoEMLP
from theseus.model.layers.moe import capacity


def numpy(x):
    return ops.convert_to_numpy(x)


def silu(x):
    return x / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(layer, x):
    """The layer in NumPy, from its definition (Mixtral / Qwen2-MoE routing, shared expert)."""
    w = {v.path.split("/", 1)[1]: numpy(v) for v in layer.weights}
    tokens = x.reshape(-1, layer.width).astype("float64")
    logits = tokens @ w["router/kernel"]
    probs = softmax(logits)
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, : layer.top_k]  # (N, K)
    picked = np.take_along_axis(probs, chosen, axis=-1)
    if layer.norm_topk_prob:
        picked = picked / picked.sum(-1, keepdims=True)
    out = np.zeros_like(tokens)
    for n in range(len(tokens)):
        for e, p in zip(chosen[n], picked[n]):
            t = tokens[n]
            out[n] += p * ((silu(t @ w["expert_gate"][e]) * (t @ w["expert_up"][e])) @ w["expert_down"][e])
    if layer.shared is not None:
        shared = (silu(tokens @ w["shared/gate/kernel"]) * (tokens @ w["shared/up/kernel"])) @ w["shared/down/kernel"]
        if layer.shared_gate is not None:
            shared = shared / (1 + np.exp(-(tokens @ w["shared_gate/kernel"])))
        out += shared
    mask = np.eye(layer.n_experts)[chosen]  # (N, K, E)
    aux = layer.n_experts * np.sum(mask.mean(0) * probs.mean(0))
    lse = np.log(np.exp(logits).sum(-1))
    return out.reshape(x.shape), aux, np.mean(lse**2)


def make(width=16, hidden=24, input_shape=(2, 5, 16), seed=0, **kwargs):
    layer = MoEMLP(width, hidden, name="mlp", **kwargs)
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    for v in layer.weights:  # big enough that the router's choices are clear, not ties
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    return layer, rng.normal(size=input_shape).astype("float32")


def test_weights_carry_the_expert_axis_and_config_round_trips():
    layer, _ = make(n_experts=4, top_k=2, shared_hidden=8, gated_shared=True)
    shapes = {v.path: (tuple(v.shape), v.logical_axes) for v in layer.weights}
    assert shapes["mlp/expert_gate"] == ((4, 16, 24), (Axes.EXPERT, Axes.N_EMBD, Axes.N_EMBD_FF))
    assert shapes["mlp/expert_down"] == ((4, 24, 16), (Axes.EXPERT, Axes.N_EMBD_FF, Axes.N_EMBD))
    assert shapes["mlp/router/kernel"] == ((16, 4), (Axes.N_EMBD, None))
    assert shapes["mlp/shared_gate/kernel"] == ((16, 1), (Axes.N_EMBD, None))
    assert MoEMLP.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="top_k=3 must be between 1 and n_experts=2"):
        MoEMLP(16, 24, n_experts=2, top_k=3)


def test_top1_with_one_expert_is_the_dense_gated_mlp_exactly():
    moe, x = make(n_experts=1, top_k=1)
    dense = GatedMLP(16, 24, name="dense")
    dense.build(x.shape)
    for name in ("gate", "up", "down"):
        getattr(dense, name).kernel.assign(getattr(moe, f"expert_{name}")[0])
    np.testing.assert_array_equal(numpy(moe(x)), numpy(dense(x)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_experts": 4, "top_k": 2},  # Mixtral
        {"n_experts": 4, "top_k": 2, "norm_topk_prob": False, "shared_hidden": 8, "gated_shared": True},  # Qwen2-MoE
        {"n_experts": 3, "top_k": 1, "shared_hidden": 8},
    ],
)
def test_output_aux_loss_and_z_loss_equal_a_numpy_reference(kwargs):
    layer, x = make(**kwargs)
    want, aux, z = reference(layer, x)
    np.testing.assert_allclose(numpy(layer(x)), want, rtol=1e-4, atol=1e-5)
    routing = layer.route(ops.reshape(x, (-1, 16)))
    np.testing.assert_allclose(numpy(routing["aux_loss"]), aux, rtol=1e-5)
    np.testing.assert_allclose(numpy(routing["z_loss"]), z, rtol=1e-5)
    assert not layer.losses  # nothing added outside training
    layer(x, training=True)
    np.testing.assert_allclose(numpy(layer.losses[0]), 0.01 * aux + 0.0 * z, rtol=1e-5)


def routed(first_choices, top_k, n_experts=2, **kwargs):
    """A layer whose router sends token n first to expert `first_choices[n]` (then the next one)."""
    layer = MoEMLP(4, 8, n_experts=n_experts, top_k=top_k, aux_loss_weight=0.0, z_loss_weight=0.0, **kwargs)
    layer.build((1, len(first_choices), 4))
    kernel = np.zeros((4, n_experts), "float32")
    kernel[:n_experts, :n_experts] = np.eye(n_experts)
    layer.router.kernel.assign(kernel)
    x = np.zeros((1, len(first_choices), 4), "float32")
    for n, e in enumerate(first_choices):
        x[0, n, e] = 2.0
    return layer, x


def test_dropped_pairs_at_a_capacity_equal_a_hand_count():
    assert capacity(6, 2, 1, 1.0) == 3 and capacity(4, 2, 2, 0.5) == 2 and capacity(1, 8, 1, 0.1) == 1
    # top-1: five tokens want expert 0, one wants expert 1; 3 slots each -> tokens 3 and 4 dropped
    layer, x = routed([0, 0, 0, 0, 0, 1], top_k=1, capacity_factor=1.0)
    routing = layer.route(ops.reshape(x, (-1, 4)))
    assert numpy(routing["dropped"]) == 2
    np.testing.assert_array_equal(numpy(routing["dispatch"]).sum(-1), [[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 1]])
    y = numpy(layer(x, training=True))[0]
    exact = numpy(layer(x))[0]  # outside training nothing is dropped
    np.testing.assert_array_equal(y[3:5], 0.0)
    np.testing.assert_allclose(y[[0, 1, 2, 5]], exact[[0, 1, 2, 5]], rtol=1e-6)
    assert np.abs(exact[3:5]).min() > 0
    # top-2 at capacity 2: first choices take slots before second choices (GShard's priority)
    layer, x = routed([0, 0, 0, 1], top_k=2, capacity_factor=0.5)
    routing = layer.route(ops.reshape(x, (-1, 4)))
    assert numpy(routing["dropped"]) == 4
    kept = numpy(routing["dispatch"]).sum(-1)
    # expert 0: t0, t1 (first choices; t2's is third in line); expert 1: t3 (first), then t0 (second)
    np.testing.assert_array_equal(kept, [[1, 1], [1, 0], [0, 0], [0, 1]])
    assert numpy(routing["dispatch"]).sum(0).max() == 1  # one token per slot
    # the capacity holds per row of the batch: two such rows drop twice as many, the same ones
    y = numpy(layer(np.concatenate([x, x]), training=True))
    routing = layer.route(ops.reshape(np.concatenate([x, x]), (-1, 4)), groups=2)
    assert numpy(routing["dropped"]) == 8
    np.testing.assert_array_equal(numpy(routing["dispatch"]).sum(-1), np.concatenate([kept, kept]))
    np.testing.assert_allclose(y[0], y[1], rtol=1e-6)
    no_drop = layer.route(ops.reshape(x, (-1, 4)), drop=False)
    assert no_drop["dispatch"] is None and numpy(no_drop["dropped"]) == 0
