"""A routed mixture of SwiGLU experts (Mixtral, Qwen2-MoE, Qwen3-MoE), with its auxiliary losses.

Routing is the dispatch/combine formulation (GShard, Switch): each token's router picks its
`top_k` experts; with a capacity, a one-hot dispatch tensor gathers at most `capacity` tokens
of each row of the batch per expert and a combine tensor weights their outputs back, dense ops only, so it runs on every
backend and shards by the experts' logical axis (`Axes.EXPERT`). Without a capacity every expert
runs on every token and the combine weights (zero off the chosen experts) pick the outputs: exact
(no token is dropped), at `n_experts / top_k` times the active FLOPs.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from theseus.model.axes import Axes
from theseus.model.layers.base import Layer
from theseus.model.layers.dense import Dense
from theseus.model.layers.mlp import GatedMLP, get_activation


def capacity(tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: `ceil(capacity_factor * tokens * top_k / n_experts)` (at least 1)."""
    return max(1, math.ceil(capacity_factor * tokens * top_k / n_experts))


class Gate(Dense):
    """A routing gate (the router, the shared expert's gate): a `Dense` that LoRA leaves alone,
    as PEFT adapts no router of transformers' MoE families (and a rank-8 update of a
    (width, n_experts) kernel would only unsettle the routing)."""

    adaptable = False


class MoEMLP(Layer):
    """`sum_k p_k * expert_k(x)` over each token's `top_k` experts, plus optional shared experts.

    Each expert is a gated MLP `down(act(x @ gate) * (x @ up))`; the experts' kernels are stacked:
    `expert_gate`, `expert_up` (n_experts, width, hidden) and `expert_down` (n_experts, hidden, width),
    the router is `router/kernel` (width, n_experts). A shared expert (`shared_hidden > 0`, Qwen2-MoE)
    is a `GatedMLP` named `shared` that every token goes through, scaled by `sigmoid(x @ shared_gate)`
    when `gated_shared` (`shared_gate/kernel`, (width, 1)).

    While training the layer adds `aux_loss_weight * aux + z_loss_weight * z` to the model's
    losses (`add_loss`): `aux` is the Switch/Mixtral load-balancing loss
    `n_experts * sum_e f_e * P_e` (f_e: the fraction of (token, choice) pairs routed to e, averaged
    per choice and summed over the `top_k` choices; P_e: the mean router probability of e), `z` the
    router z-loss `mean(logsumexp(logits)^2)` (ST-MoE). `route` returns both, and the dropped count.

    Args:
        width: the residual width (input and output).
        hidden: each expert's hidden width.
        n_experts: routed experts.
        top_k: experts per token.
        norm_topk_prob: renormalise the top-k probabilities to sum to 1 (Mixtral, Qwen3-MoE); else
            keep the softmax over all experts (Qwen2-MoE).
        shared_hidden: hidden width of the shared expert; 0 = none.
        gated_shared: scale the shared expert by a learned sigmoid gate (Qwen2-MoE).
        capacity_factor: slots per expert and row of the batch, as a multiple of an even share of
            the row's tokens (`capacity`); while
            training, a (token, expert) pair past its expert's slots is dropped (the token keeps its
            residual and its other experts). Evaluation and generation drop nothing, so a cached
            forward pass equals the full one. None or 0: no capacity, nothing dropped.
        aux_loss_weight / z_loss_weight: weights of the two losses (0 adds nothing).
        activation: a name from `theseus.model.layers.mlp.ACTIVATIONS`.
        init_std / out_init_std: normal initializer scales for router, gate and up / down.

    Example:
        >>> moe = MoEMLP(64, 128, n_experts=8, top_k=2, name="mlp")
        >>> y = moe(x)  # (B, T, 64)
    """

    config_args = (
        "width",
        "hidden",
        "n_experts",
        "top_k",
        "norm_topk_prob",
        "shared_hidden",
        "gated_shared",
        "capacity_factor",
        "aux_loss_weight",
        "z_loss_weight",
        "activation",
        "init_std",
        "out_init_std",
    )

    def __init__(
        self,
        width: int,
        hidden: int,
        n_experts: int,
        top_k: int = 2,
        norm_topk_prob: bool = True,
        shared_hidden: int = 0,
        gated_shared: bool = False,
        capacity_factor: float | None = None,
        aux_loss_weight: float = 0.01,
        z_loss_weight: float = 0.0,
        activation: str = "silu",
        init_std: float = 0.02,
        out_init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={n_experts}")
        self.width, self.hidden, self.n_experts, self.top_k = width, hidden, n_experts, top_k
        self.norm_topk_prob, self.shared_hidden, self.gated_shared = norm_topk_prob, shared_hidden, gated_shared
        self.capacity_factor = capacity_factor or None
        self.aux_loss_weight, self.z_loss_weight = aux_loss_weight, z_loss_weight
        self.activation, self.init_std, self.out_init_std = activation, init_std, out_init_std
        self._act = get_activation(activation)
        normal = keras.initializers.RandomNormal(stddev=init_std)
        self.router = Gate(n_experts, (Axes.N_EMBD, None), use_bias=False, kernel_initializer=normal, name="router")
        self.shared = (
            GatedMLP(width, shared_hidden, activation, init_std=init_std, out_init_std=out_init_std, name="shared")
            if shared_hidden
            else None
        )
        self.shared_gate = (
            Gate(1, (Axes.N_EMBD, None), use_bias=False, kernel_initializer=normal, name="shared_gate")
            if shared_hidden and gated_shared
            else None
        )

    def build(self, input_shape: tuple) -> None:
        self.router.build(input_shape)
        for layer in (self.shared, self.shared_gate):
            if layer is not None:
                layer.build(input_shape)
        experts, width, hidden = self.n_experts, self.width, self.hidden
        normal = keras.initializers.RandomNormal
        inner = (Axes.EXPERT, Axes.N_EMBD, Axes.N_EMBD_FF)
        self.expert_gate = self.add_weight(
            name="expert_gate", shape=(experts, width, hidden), initializer=normal(stddev=self.init_std), axes=inner
        )
        self.expert_up = self.add_weight(
            name="expert_up", shape=(experts, width, hidden), initializer=normal(stddev=self.init_std), axes=inner
        )
        self.expert_down = self.add_weight(
            name="expert_down",
            shape=(experts, hidden, width),
            initializer=normal(stddev=self.out_init_std),
            axes=(Axes.EXPERT, Axes.N_EMBD_FF, Axes.N_EMBD),
        )

    def call(self, x, training=False):
        tokens = ops.reshape(x, (-1, self.width))  # (N, C), N = B * T
        routing = self.route(tokens, drop=training, groups=ops.shape(x)[0])
        if training and (self.aux_loss_weight or self.z_loss_weight):
            self.add_loss(self.aux_loss_weight * routing["aux_loss"] + self.z_loss_weight * routing["z_loss"])
        combine = ops.cast(routing["combine"], x.dtype)
        if routing["dispatch"] is None:  # no capacity: every expert on every token
            outputs = self.experts(ops.broadcast_to(tokens[None], (self.n_experts, *ops.shape(tokens))))  # (E, N, C)
            y = ops.einsum("ne,enc->nc", combine, outputs)
        else:  # per group (row of the batch): its tokens into its slots, the outputs back
            groups, experts, slots = ops.shape(x)[0], self.n_experts, ops.shape(combine)[-1]
            dispatch = ops.reshape(ops.cast(routing["dispatch"], x.dtype), (groups, -1, experts, slots))
            rows = ops.reshape(tokens, (groups, -1, self.width))  # (G, T, C)
            expert_in = ops.reshape(ops.einsum("gtes,gtc->egsc", dispatch, rows), (experts, -1, self.width))
            outputs = ops.reshape(self.experts(expert_in), (experts, groups, slots, self.width))  # (E, G, S, C)
            combine = ops.reshape(combine, (groups, -1, experts, slots))
            y = ops.reshape(ops.einsum("gtes,egsc->gtc", combine, outputs), (-1, self.width))
        if self.shared is not None:
            shared = self.shared(tokens)
            if self.shared_gate is not None:
                shared = ops.sigmoid(self.shared_gate(tokens)) * shared
            y = y + shared
        return ops.reshape(y, ops.shape(x))

    def experts(self, inputs):
        """Every expert on its own rows: `inputs` (E, M, C) -> (E, M, C)."""
        hidden = self._act(ops.matmul(inputs, self.expert_gate)) * ops.matmul(inputs, self.expert_up)  # (E, M, H)
        return ops.matmul(hidden, self.expert_down)

    def route(self, tokens, drop: bool = True, groups: int = 1) -> dict[str, Any]:
        """The routing of `tokens` (N, C), in float32; `drop=False` ignores the capacity, which
        applies to each of `groups` equal runs of tokens (the layer's are the rows of its batch).

        Returns a dict: `probs` (N, E) the router's softmax; `weights`, `experts` (N, top_k) the
        chosen experts and their (renormalised or not) probabilities; `combine` (N, E), or
        (N, E, S) with a capacity of S slots, and then `dispatch` (N, E, S) one-hot (else None);
        `aux_loss`, `z_loss`; `dropped`, the (token, expert) pairs past capacity.
        """
        logits = ops.cast(self.router(tokens), "float32")  # (N, E)
        probs = ops.softmax(logits, axis=-1) if self.n_experts > 1 else ops.ones_like(logits)
        weights, experts = ops.top_k(probs, self.top_k)  # (N, K)
        if self.norm_topk_prob:
            weights = weights / ops.sum(weights, axis=-1, keepdims=True)
        chosen = ops.one_hot(experts, self.n_experts, dtype="float32")  # (N, K, E)
        routing = {
            "probs": probs,
            "weights": weights,
            "experts": experts,
            "aux_loss": self.n_experts * ops.sum(ops.mean(chosen, axis=0) * ops.mean(probs, axis=0)),
            "z_loss": ops.mean(ops.square(ops.logsumexp(logits, axis=-1))),
        }
        if self.capacity_factor is None or not drop:
            combine = ops.einsum("nke,nk->ne", chosen, weights)
            return {**routing, "combine": combine, "dispatch": None, "dropped": ops.zeros((), "float32")}
        return {**routing, **self._dispatch(chosen, weights, groups)}

    def _dispatch(self, chosen, weights, groups: int) -> dict[str, Any]:
        """Slots per expert and group: the group's first choices in token order, then its second
        choices, ... (GShard's priority); a pair whose slot is past the capacity is dropped."""
        total, k, e = ops.shape(chosen)
        n = total // groups
        slots = capacity(n, e, k, self.capacity_factor)
        by_choice = ops.transpose(ops.reshape(chosen, (groups, n, k, e)), (0, 2, 1, 3))
        by_choice = ops.reshape(by_choice, (groups, k * n, e))  # (G, K * n, E)
        position = ops.cumsum(by_choice, axis=1) - 1.0  # slot each pair would take in its expert
        kept = by_choice * ops.cast(position < slots, "float32")

        def per_token(values):  # (G, K * n, E) -> (N, K, E)
            return ops.reshape(ops.transpose(ops.reshape(values, (groups, k, n, e)), (0, 2, 1, 3)), (total, k, e))

        position, kept = per_token(position), per_token(kept)
        slot = ops.one_hot(ops.cast(ops.clip(position, 0, slots - 1), "int32"), slots, dtype="float32")  # (N, K, E, S)
        dispatch = ops.einsum("nke,nkes->nes", kept, slot)
        combine = ops.einsum("nke,nk,nkes->nes", kept, weights, slot)
        return {"combine": combine, "dispatch": dispatch, "dropped": ops.sum(chosen) - ops.sum(kept)}

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)
