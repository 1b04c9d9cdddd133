"""`flops_per_token` against an independent count: XLA's cost analysis of the compiled training
step (forward, backward and AdamW update, `jax.jit`), for a dense model, a LoRA model and a model
with frozen blocks.

XLA counts every FLOP: the matmuls `flops_per_token` counts and the elementwise work it leaves
out (norms, activations, softmax, the loss, the optimizer). The models are wide enough (width
128, heads of 64) that the elementwise part is a few percent, so the two agree within 10%, and
XLA's count is never below ours (a matmul we count that XLA does not run would show).
"""

import keras
import numpy as np
import pytest
from support import needs_jax

from theseus.model.models import GPT, Llama, MoE
from theseus.training import lora
from theseus.training.flops import flops_per_token, step_flops

BATCH, LENGTH = 4, 64
jax_only = needs_jax("XLA's cost analysis of a jax.jit step")


def xla_flops_per_token(model: keras.Model) -> float:
    """FLOPs per token of one compiled training step, as XLA's cost analysis counts them."""
    import jax

    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.optimizer.build(model.trainable_variables)
    ids = np.random.default_rng(0).integers(0, model.vocab_size, (BATCH, LENGTH + 1)).astype("int32")

    def loss(trainable, frozen, x, y):
        logits, _ = model.stateless_call(trainable, frozen, x, training=True)
        return model.loss(y, logits)

    def step(trainable, frozen, optimizer, x, y):
        value, grads = jax.value_and_grad(loss)(trainable, frozen, x, y)
        trainable, optimizer = model.optimizer.stateless_apply(optimizer, grads, trainable)
        return value, trainable, optimizer

    state = [[v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables)]
    optimizer = [v.value for v in model.optimizer.variables]
    compiled = jax.jit(step).lower(*state, optimizer, ids[:, :-1], ids[:, 1:]).compile()
    return compiled.cost_analysis()["flops"] / (BATCH * LENGTH)


def gpt() -> GPT:
    model = GPT(vocab_size=512, block_size=LENGTH, n_layer=2, n_head=2, n_embd=128)
    model.build((None, LENGTH))
    return model


def llama() -> Llama:
    model = Llama(vocab_size=512, block_size=LENGTH, n_layer=2, n_head=4, n_kv_head=2, n_embd=128, head_dim=64)
    model.build((None, LENGTH))
    return model


def check_against_xla(model: keras.Model) -> float:
    ours, xla = flops_per_token(model, {}, LENGTH), xla_flops_per_token(model)
    assert ours <= xla <= 1.10 * ours, (ours, xla)
    return ours


WIDTH, VOCAB = 128, 512
PROJECTIONS = 12 * WIDTH * WIDTH  # a GPT block's multiply-adds per token: q, k, v, output, up and down
ATTENTION = 2 * LENGTH * WIDTH  # its score and value products over all 64 keys (the mask skips nothing here)


@jax_only
@pytest.mark.slow
def test_a_dense_model_counts_what_xla_runs():
    model = gpt()
    # 6 FLOPs per multiply-add (forward, input and weight gradients) for both blocks and the tied head;
    # the embedding lookups are no matmuls
    assert check_against_xla(model) == 6 * (2 * PROJECTIONS + 2 * ATTENTION + VOCAB * WIDTH)


@jax_only
@pytest.mark.slow
def test_frozen_blocks_pass_no_gradient_below_the_first_trainable_one():
    model = gpt()
    lora.freeze(model, train_last_blocks=1)
    # block 0 and the embedding are frozen: block 0 runs forward only, the (tied) head gets no weight gradient
    block_0, block_1, head = 2 * (PROJECTIONS + ATTENTION), 6 * (PROJECTIONS + ATTENTION), 4 * VOCAB * WIDTH
    assert check_against_xla(model) == block_0 + block_1 + head


@jax_only
@pytest.mark.slow
def test_a_lora_model_counts_no_weight_gradient_for_its_frozen_base():
    model = llama()
    dense = flops_per_token(model, {}, LENGTH)
    lora.enable_lora(model, rank=8, alpha=16, targets=["attn", "mlp"])
    ours = check_against_xla(model)
    assert ours < 0.75 * dense  # about 4 FLOPs per frozen base weight, not 6
    assert ours < 0.75 * 6 * model.count_params()  # well under the 6N of the usual count
    counted = step_flops(model, LENGTH)
    assert counted.backward < 1.1 * counted.forward  # no weight gradient but the adapters'


@jax_only
@pytest.mark.slow
@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_a_mixture_of_experts_counts_the_experts_as_they_run(capacity_factor):
    # no capacity: all 4 experts run on every token; a capacity of 1.25: 40 slots per expert and sequence
    model = MoE(
        vocab_size=VOCAB,
        n_layer=2,
        n_head=2,
        n_embd=WIDTH,
        n_embd_ff=256,
        n_experts=4,
        top_k=2,
        capacity_factor=capacity_factor,
    )
    model.build((None, LENGTH))
    check_against_xla(model)


@jax_only
@pytest.mark.slow
def test_a_keras_hub_model_with_keras_lora_is_counted_from_its_kernels():
    from theseus.model.keras_hub import KerasHubLM

    config = "{vocabulary_size: 512, num_layers: 2, num_heads: 2, hidden_dim: 128, intermediate_dim: 512, max_sequence_length: 64}"
    model = KerasHubLM(backbone_name="GPT2Backbone", backbone_config=config)
    model.build()
    dense = flops_per_token(model, {}, LENGTH)
    lora.enable_lora(model, rank=8, alpha=16, targets=["attention", "feedforward"])
    # Keras merges its adapters into the kernel: the whole kernel's gradient is computed per token
    assert check_against_xla(model) > 0.9 * dense
