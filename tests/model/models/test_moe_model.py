import numpy as np
import pytest
from keras import ops

from theseus.model.models import Llama, MoE
from theseus.model.models.causal_lm import CausalLMLoss

SMALL = dict(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, n_embd_ff=48)


def numpy(x):
    return ops.convert_to_numpy(x)


def test_top1_with_one_expert_equals_the_dense_model_exactly():
    dense, moe = Llama(**SMALL), MoE(**SMALL, n_experts=1, top_k=1)
    dense.build((None, 8))
    moe.build((None, 8))
    weights = {v.path.split("/", 1)[1]: v for v in moe.weights}
    for v in dense.weights:
        path = v.path.split("/", 1)[1]
        if "/mlp/" in path:  # block_i/mlp/gate/kernel -> block_i/mlp/expert_gate[0]
            block, _, name, _ = path.split("/")
            weights[f"{block}/mlp/expert_{name}"].assign(numpy(v)[None])
        else:
            weights[path].assign(v)
    ids = np.random.default_rng(0).integers(0, 64, (2, 8)).astype("int32")
    np.testing.assert_array_equal(numpy(moe(ids)), numpy(dense(ids)))


def test_experts_shared_and_dense_blocks_and_config_round_trip():
    model = MoE(**SMALL, n_experts=4, top_k=2, n_embd_expert=16, n_embd_shared=8, gated_shared=True, dense_layers=[1])
    model.build((None, 8))
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    assert shapes["moe/block_0/mlp/expert_up"] == (4, 32, 16)
    assert shapes["moe/block_0/mlp/shared/up/kernel"] == (32, 8)
    assert shapes["moe/block_1/mlp/up/kernel"] == (32, 48)  # dense block: Llama's MLP
    assert model.expert_axis == "expert"
    clone = MoE.from_config(model.get_config())
    assert clone.get_config() == model.get_config() and clone.dense_layers == [1]
    with pytest.raises(ValueError, match="dense_layers=\\[2\\] must be block indices below n_layer=2"):
        MoE(**SMALL, dense_layers=[2])


def test_the_auxiliary_losses_reach_the_training_loss():
    model = MoE(**SMALL, n_experts=4, top_k=2, aux_loss_weight=0.1, z_loss_weight=0.01, dense_layers=[0])
    ids = np.random.default_rng(1).integers(0, 64, (2, 8)).astype("int32")
    logits = model(ids)
    assert not model.losses  # evaluation adds nothing
    x, rotary = model.embed(ids, ops.arange(8))
    expected = 0.0
    for block in model.blocks:  # the blocks' forward pass by hand, routing each MoE block's input
        x = x + block.attn(block.ln_1(x), rotary=rotary)
        h = block.ln_2(x)
        if block.moe is not None:
            routing = block.mlp.route(ops.reshape(h, (-1, 32)))
            expected += 0.1 * numpy(routing["aux_loss"]) + 0.01 * numpy(routing["z_loss"])  # one MoE block
        x = x + block.mlp(h)
    np.testing.assert_allclose(numpy(model.logits(x)), numpy(logits), atol=1e-5)
    targets = np.roll(ids, -1, axis=1)
    logits = model(ids, training=True)
    assert len(model.losses) == 1  # the dense block adds none
    model.compile(optimizer="adamw")
    total = model.compute_loss(x=ids, y=targets, y_pred=logits)
    np.testing.assert_allclose(numpy(total), numpy(CausalLMLoss()(targets, logits)) + expected, rtol=1e-5)


def test_cached_decoding_equals_the_full_forward_pass_even_with_a_capacity():
    """Evaluation drops nothing, so one token at a time routes as the whole sequence does."""
    model = MoE(**SMALL, n_experts=4, top_k=2, capacity_factor=0.5)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 64, (2, 9)).astype("int32")
    mask = np.ones((2, 9), bool)
    mask[1, :3] = False
    full = numpy(model(ids, padding_mask=mask))
    cache = model.init_cache(2, 9)
    first, cache = model.call_with_cache(ids[:, :6], cache, 0, mask)
    steps = [numpy(first)]
    for t in range(6, 9):
        out, cache = model.call_with_cache(ids[:, t : t + 1], cache, t, mask)
        steps.append(numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1)[mask], full[mask], atol=1e-5)
