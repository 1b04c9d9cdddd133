"""MoE: Llama with its MLPs replaced by routed mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE).

Attention, norms and positions are Llama's (every Llama field works here); each block's MLP is a
`MoEMLP` (`theseus.model.layers.moe`), except the blocks listed in `dense_layers`, which keep
Llama's dense `GatedMLP`. The experts' kernels carry the logical axis `Axes.EXPERT`, which the
`ep` and `fsdp+ep` strategies (`theseus.base.mesh`) split over the mesh: expert parallelism.
"""

from __future__ import annotations

from typing import Any

from theseus.config import field
from theseus.model.axes import Axes
from theseus.model.layers.moe import MoEMLP
from theseus.model.models.causal_lm import DecoderBlock
from theseus.model.models.llama import Llama, LlamaBlock


class MoEBlock(LlamaBlock):
    """A Llama block whose MLP is a `MoEMLP` built from `moe` (its arguments but the width);
    `moe=None` keeps the dense MLP."""

    def __init__(self, *args: Any, moe: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moe = moe

    def build(self, input_shape: tuple) -> None:
        if self.moe is None:
            return super().build(input_shape)
        self.mlp = MoEMLP(input_shape[-1], name="mlp", **self.moe)
        DecoderBlock.build(self, input_shape)  # Llama's build would make a dense MLP


class MoE(Llama):
    """Decoder-only mixture-of-experts language model: Llama's fields plus the experts'.

    While training, each MoE block adds its weighted load-balancing and router z-losses to the
    model's losses (Keras adds `model.losses` to the loss `fit` minimises); evaluation and
    generation add nothing and drop no token.

    Example:
        >>> model = MoE(vocab_size=320, n_layer=2, n_head=4, n_embd=64, n_experts=8, top_k=2)
        >>> logits = model(token_ids)  # (B, T, 320)
    """

    n_experts: int = field("architecture/n_experts", default=8, bounds=">= 1", help="routed experts per MoE block")
    top_k: int = field("architecture/top_k", default=2, bounds=">= 1", help="experts each token is routed to")
    n_embd_expert: int | None = field(
        "architecture/n_embd_expert", default=None, bounds=">= 1", help="hidden width of each expert; null = n_embd_ff"
    )
    norm_topk_prob: bool = field(
        "architecture/norm_topk_prob",
        default=True,
        help="renormalise the top_k router probabilities to sum to 1 (Mixtral, Qwen3-MoE; not Qwen2-MoE)",
    )
    n_embd_shared: int = field(
        "architecture/n_embd_shared",
        default=0,
        bounds=">= 0",
        help="hidden width of a shared expert every token goes through; 0 = none (Qwen2-MoE has one)",
    )
    gated_shared: bool = field(
        "architecture/gated_shared", default=False, help="scale the shared expert by a sigmoid gate (Qwen2-MoE)"
    )
    capacity_factor: float | None = field(
        "architecture/capacity_factor",
        default=None,
        bounds=">= 0",
        help="training only: slots per expert, times an even share of a row's tokens; pairs past them are "
        "dropped; null or 0 = no capacity (exact)",
    )
    aux_loss_weight: float = field(
        "architecture/aux_loss_weight",
        default=0.01,
        bounds=">= 0",
        help="weight of the load-balancing loss (Switch/Mixtral form), averaged over MoE blocks",
    )
    z_loss_weight: float = field(
        "architecture/z_loss_weight", default=0.001, bounds=">= 0", help="weight of the router z-loss (ST-MoE)"
    )
    dense_layers: list[int] = field(
        "architecture/dense_layers",
        default_factory=list,
        help="indices of blocks that keep a dense MLP (width n_embd_ff) instead of experts",
    )

    block_class = MoEBlock

    def __init__(self, name: str = "moe", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} is more than n_experts={self.n_experts}")
        if any(not 0 <= i < self.n_layer for i in self.dense_layers):
            raise ValueError(f"dense_layers={self.dense_layers} must be block indices below n_layer={self.n_layer}")

    def make_block(self, index: int, **kwargs: Any) -> LlamaBlock:
        if index in self.dense_layers:
            return super().make_block(index)
        sparse = max(1, self.n_layer - len(set(self.dense_layers)))  # the losses are averaged over MoE blocks
        moe = {
            "hidden": self.n_embd_expert or self.n_embd_ff,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "norm_topk_prob": self.norm_topk_prob,
            "shared_hidden": self.n_embd_shared,
            "gated_shared": self.gated_shared,
            "capacity_factor": self.capacity_factor,
            "aux_loss_weight": self.aux_loss_weight / sparse,
            "z_loss_weight": self.z_loss_weight / sparse,
        }
        return super().make_block(index, moe=moe)

    @property
    def expert_axis(self) -> str:
        """The logical axis expert-parallel strategies split (`theseus.base.mesh.Strategy.EP`)."""
        return Axes.EXPERT.value
