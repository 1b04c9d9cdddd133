"""Logical axis names: what each dimension of a weight *is*.

Every weight declares one `Axes` member (or None) per dimension when it is created;
a model's `sharding` rules then say where each logical axis goes on the mesh.
"""

from enum import Enum

from theseus.base.axis import Axis


class Axes(str, Enum):
    VOCAB = "vocab"  # token embedding rows / output logits
    BLOCK_SIZE = "block_size"  # learned position embedding rows
    N_EMBD = "n_embd"  # the residual stream width (d_model)
    N_EMBD_FF = "n_embd_ff"  # the MLP hidden width
    N_EMBD_OUT = "n_embd_out"  # attention output projection input (heads * head_dim)
    N_ATTN = "n_attn"  # query heads * head_dim (fused or not)
    N_KV = "n_kv"  # key/value heads * head_dim (smaller than N_ATTN under GQA)
    N_LAYER = "n_layer"  # stacked-layer dimension, for models that scan over layers
    EXPERT = "expert"  # the experts of a mixture-of-experts layer (stacked expert kernels)

    def __str__(self) -> str:
        return self.value


TENSOR_PARALLEL: list[tuple[str, Axis | None]] = [
    (Axes.VOCAB.value, None),
    (Axes.BLOCK_SIZE.value, None),
    (Axes.N_EMBD.value, None),
    (Axes.N_EMBD_FF.value, Axis.SHARD),
    (Axes.N_EMBD_OUT.value, Axis.SHARD),
    (Axes.N_ATTN.value, Axis.SHARD),
    (Axes.N_KV.value, Axis.SHARD),
    (Axes.EXPERT.value, None),
]
"""Megatron-style tensor parallelism, the default rules of every causal LM: attention heads
and the MLP hidden width split over `shard`, embeddings, the residual width and the experts
replicated (each expert's hidden width is split like a dense MLP's); expert parallelism, which
splits the experts, is a strategy (`theseus.base.mesh.Strategy.EP`)."""
