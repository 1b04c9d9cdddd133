"""The FLOPs a training step does, per token trained: what MFU divides by.

Counted matmul by matmul, as the step runs them (JAX's gradient, and every backend's, computes
only what reaches a trainable weight):

- forward: 2 FLOPs per multiply-add of each use of a weight per token (a projection
  `in x out`, the head `n_embd x vocab`, each expert that runs on the token);
- backward: 2 more for the gradient of the matmul's input, when anything trainable lies below
  it (a frozen first block under LoRA passes none back), and 2 more for the weight's gradient,
  for trainable weights only (a frozen base weight under LoRA gets none: its adapters do);
- an embedding lookup is no matmul (0); a tied embedding used as the head is one;
- attention's score (`q kᵀ`) and value (`p v`) products per query token: 2 * heads * head_dim
  per key attended, forward; backward 2 more for each operand that needs a gradient. The keys
  attended are all `block_size` of them where attention runs as matmuls with the causal mask
  added to the full square of scores (theseus's explicit path on JAX's CPU backend, XLA's
  `dot_product_attention` on TensorFlow or in float32 on a GPU: the mask skips no work), and
  `(block_size + 1) / 2` where a flash kernel skips the masked blocks (`keys_attended`);
- a mixture of experts: without a capacity every expert runs on every token (counted as run);
  with one, each expert's slots per sequence, plus the dispatch and combine products;
- the chunked loss (`theseus.model.chunked_loss`) runs the head's matmuls once, as a plain head;
- elementwise work (norms, activations, softmax, the loss, the optimizer) is left out, as in
  the usual MFU counts; gradient accumulation and the batch size change nothing per token.

Checked against XLA's cost analysis of the compiled step (`tests/training/test_flops.py`): XLA
counts a few percent more, the elementwise work, for dense, LoRA, frozen-block, MoE and keras-hub models.

Native models (`DecoderLM`: GPT, Llama and its variants, MoE; `HFCompat` around one) are
counted layer by layer; any other model (a keras-hub backbone, a user's `Module`) from its
projections' kernels in layer order, with attention from its backbone's sizes or its theseus
attention layers (`values`' `architecture/n_layer` and `n_embd` when it has neither).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import keras

from theseus.model.layers.attention import CausalSelfAttention, fused_attention_available
from theseus.model.layers.dense import Dense
from theseus.model.layers.mlp import MLP, GatedMLP
from theseus.model.layers.moe import MoEMLP, capacity
from theseus.model.models.causal_lm import DecoderBlock, DecoderLM
from theseus.training.lora import kernel


class Tally:
    """Forward and backward FLOPs per token, added up matmul by matmul.

    Each counting function below takes whether its input needs a gradient and returns whether
    its output does (its input did, or it holds a trainable weight).
    """

    def __init__(self, model: keras.Model, length: int):
        self.trainable = {id(v) for v in model.trainable_variables}
        self.length, self.dtype = length, model.dtype_policy.compute_dtype  # tokens per sequence
        self.forward = self.backward = 0.0
        self.attention = False  # whether an attention layer was counted

    def trains(self, *variables: Any) -> bool:
        return any(id(v) in self.trainable for v in variables if v is not None)

    def matmul(self, macs: float, a: bool, b: bool) -> None:
        """A product of `macs` multiply-adds per token; `a`, `b`: whether each operand needs a gradient."""
        self.forward += 2 * macs
        self.backward += 2 * macs * (int(a) + int(b))


def _size(variable: Any) -> int:
    return math.prod(variable.shape)


def dense(t: Tally, layer: keras.Layer, x: bool) -> bool:
    """A theseus `Dense` or a Keras `Dense` / `EinsumDense` (each kernel entry is one multiply-add
    per token), with its LoRA adapters when enabled: theseus's go through the rank-r bottleneck
    (`x @ A @ B`); Keras's are merged into the kernel first (`kernel + A @ B`), whose whole
    gradient then flows per token (the per-step `A @ B` products are left out)."""
    weight = kernel(layer)
    adapters = (layer.lora_kernel_a, layer.lora_kernel_b) if getattr(layer, "lora_enabled", False) else ()
    merged = bool(adapters) and not isinstance(layer, Dense)
    t.matmul(_size(weight), x, t.trains(weight, *adapters) if merged else t.trains(weight))
    out = x or t.trains(weight, getattr(layer, "bias", None), *adapters)
    if adapters and not merged:
        a, b = adapters
        t.matmul(_size(a), x, t.trains(a))
        t.matmul(_size(b), x or t.trains(a), t.trains(b))
    return out


def norm(t: Tally, layer: keras.Layer | None, x: bool) -> bool:
    return x or (layer is not None and t.trains(*layer.weights))


def scores(t: Tally, heads: int, head_dim: int, q: bool, k: bool, v: bool) -> bool:
    """`softmax(q kᵀ) v` per query over the keys it attends (`keys_attended`), no weights."""
    t.attention = True
    macs = keys_attended(t.length, heads, head_dim, t.dtype) * heads * head_dim
    t.matmul(macs, q, k)
    t.matmul(macs, q or k, v)
    return q or k or v


def attention(t: Tally, attn: CausalSelfAttention, x: bool) -> bool:
    q, k, v = (dense(t, projection, x) for projection in (attn.query, attn.key, attn.value))
    if attn.qk_norm:
        q, k = norm(t, attn.query_norm, q), norm(t, attn.key_norm, k)
    # grouped-query heads are repeated to all `n_head` before the products
    return dense(t, attn.output_proj, scores(t, attn.n_head, attn.head_dim, q, k, v))


def mlp(t: Tally, layer: MLP, x: bool) -> bool:
    hidden = dense(t, layer.up, x)
    if isinstance(layer, GatedMLP):
        hidden = dense(t, layer.gate, x) or hidden
    return dense(t, layer.down, hidden)


def moe(t: Tally, layer: MoEMLP, x: bool) -> bool:
    """The router, the experts as they run (every one on every token without a capacity, else
    their slots), the dispatch and combine products, and the shared expert."""
    routed = dense(t, layer.router, x)  # the combine weights need a gradient when this does
    width, hidden = layer.width, layer.hidden
    rows = mixed = float(layer.n_experts)  # expert rows run per token; outputs each token's combine sums
    if layer.capacity_factor is not None:  # training: `capacity` slots per expert and sequence
        mixed = layer.n_experts * capacity(t.length, layer.n_experts, layer.top_k, layer.capacity_factor)
        rows = mixed / t.length
        t.matmul(mixed * width, False, x)  # dispatch: one-hot (no gradient) times the sequence's tokens
    t.matmul(rows * width * hidden, x, t.trains(layer.expert_gate))
    t.matmul(rows * width * hidden, x, t.trains(layer.expert_up))
    inner = x or t.trains(layer.expert_gate, layer.expert_up)
    t.matmul(rows * hidden * width, inner, t.trains(layer.expert_down))
    out = inner or t.trains(layer.expert_down)
    t.matmul(mixed * width, routed, out)  # combine: the routing weights times the expert outputs
    y = out or routed
    if layer.shared is not None:
        shared = mlp(t, layer.shared, x)
        if layer.shared_gate is not None:
            shared = dense(t, layer.shared_gate, x) or shared
        y = y or shared
    return y


def block(t: Tally, layer: DecoderBlock, x: bool) -> bool:
    x = attention(t, layer.attn, norm(t, layer.ln_1, x)) or x
    return feed_forward(t, layer.mlp, norm(t, layer.ln_2, x)) or x


def feed_forward(t: Tally, layer: keras.Layer, x: bool) -> bool:
    return moe(t, layer, x) if isinstance(layer, MoEMLP) else mlp(t, layer, x)


def decoder(t: Tally, model: DecoderLM) -> None:
    """Embeddings (lookups), the blocks, the final norm and the head (the tied embedding or `lm_head`)."""
    x = t.trains(model.wte.embeddings) or (model.wpe is not None and t.trains(model.wpe.embeddings))
    for layer in model.blocks:
        x = block(t, layer, x)
    head = model.wte.embeddings if model.tie_embeddings else model.lm_head
    t.matmul(model.n_embd * model.vocab_size, norm(t, model.ln_f, x), t.trains(head))


COUNTED: list[tuple[type | tuple[type, ...], Callable[[Tally, Any, bool], bool]]] = [
    (DecoderBlock, block),
    (CausalSelfAttention, attention),
    ((MLP, MoEMLP), feed_forward),
    ((Dense, keras.layers.Dense, keras.layers.EinsumDense), dense),
]
"""The layers `walk` counts as a whole; it goes into any other layer's sublayers."""


def walk(t: Tally, layer: keras.Layer, x: bool) -> bool:
    """Any layer: a known one counted as such, else its own weights (a norm, an embedding: no
    matmul) and then its sublayers in order, taken to run one after another."""
    count = next((count for kind, count in COUNTED if isinstance(layer, kind)), None)
    if count is not None:
        return count(t, layer, x)
    x = x or t.trains(*layer._trainable_variables, *layer._non_trainable_variables)
    for child in layer._flatten_layers(include_self=False, recursive=False):
        x = walk(t, child, x)
    return x


HEAD_COUNTS = ("num_query_heads", "num_heads", "num_attention_heads")
"""What keras-hub backbones call their query heads (Llama-like, GPT-2-like, Falcon)."""


def backbone(t: Tally, model: keras.Model) -> None:
    """A keras-hub backbone: its layers, attention from its sizes, and the head (the token
    embedding in reverse: its `embeddings` when tied, else `reverse_embeddings`)."""
    net = model.backbone
    x = walk(t, net, False)
    heads = next(getattr(net, name) for name in HEAD_COUNTS if getattr(net, name, None))
    head_dim = getattr(net, "head_dim", None) or net.hidden_dim // heads
    for _ in range(net.num_layers):
        scores(t, heads, head_dim, x, x, x)
    embedding = net.token_embedding
    head = embedding.embeddings if embedding.tie_weights else embedding.reverse_embeddings
    t.matmul(_size(head), x, t.trains(head))


@functools.cache
def keys_attended(length: int, heads: int, head_dim: int, dtype: str = "float32") -> float:
    """Keys each query's attention products run over: all `length` of them where the causal mask
    is added to a full square of scores (theseus on JAX's CPU backend, XLA's `dot_product_attention`
    on TensorFlow or in float32 on a GPU), `(length + 1) / 2` where a flash kernel skips the masked
    blocks (PyTorch's `scaled_dot_product_attention`, cuDNN's flash attention, TPUs' splash attention)."""
    backend = keras.backend.backend()
    if backend == "torch":
        skips = True
    else:
        skips = (
            backend == "jax" and fused_attention_available() and flash_attention_used(length, heads, head_dim, dtype)
        )
    return (length + 1) / 2 if skips else float(length)


def flash_attention_used(length: int, heads: int, head_dim: int, dtype: str = "bfloat16") -> bool:
    """Whether Keras's `dot_product_attention` picks a flash kernel on JAX for this shape and dtype."""
    from keras.src.backend.jax.nn import _can_use_flash_attention

    q = keras.ops.zeros((1, length, heads, head_dim), dtype)
    return bool(_can_use_flash_attention(q, q, q, None))


def step_flops(model: keras.Model, block_size: int, values: dict[str, Any] | None = None) -> Tally:
    """The forward and backward FLOPs per token of a training step on sequences of `block_size` tokens."""
    model = getattr(model, "architecture", model)  # `HFCompat`: the theseus family model it holds
    t = Tally(model, block_size)
    if isinstance(model, DecoderLM):
        decoder(t, model)
    elif hasattr(model, "backbone"):
        backbone(t, model)
    else:
        x = walk(t, model, False)
        layers, width = ((values or {}).get(f"architecture/{key}") or 0 for key in ("n_layer", "n_embd"))
        for _ in range(0 if t.attention else layers):  # no attention layer seen: the config's sizes, one head
            scores(t, 1, width, x, x, x)
    return t


def flops_per_token(model: keras.Model, values: dict[str, Any] | None = None, block_size: int = 1) -> float:
    """Training FLOPs per token (forward and backward) of `model` as it is set to train (frozen
    weights, LoRA adapters), on sequences of `block_size` tokens: see the module docstring."""
    t = step_flops(model, block_size, values)
    return t.forward + t.backward
