"""Mixtral, Qwen2-MoE and Qwen3-MoE <-> theseus `MoE`.

Each is its dense family (Mistral, Qwen2, Qwen3: attention, norms, rotary embeddings and
config entries as `llama.py` converts them) with the MLP of its layers replaced by a routed
mixture of experts: a router `gate` (one logit per expert) and the experts' SwiGLU
projections, plus for Qwen2-MoE a shared expert with a sigmoid gate. transformers 5 fuses
the experts in memory (`experts.gate_up_proj`) but writes, and reads, one tensor per expert
and projection: `block_sparse_moe.experts.N.w1` (gate), `w3` (up), `w2` (down) for Mixtral,
`mlp.experts.N.gate_proj` / `up_proj` / `down_proj` for Qwen. theseus stacks each
projection's experts into one weight `(experts, in, out)`, so each of those tensors fills
one entry of it (`HFTensor.index`). Qwen's dense layers (`mlp_only_layers`,
`decoder_sparse_step`) are theseus's `dense_layers`. The router's auxiliary loss is trained
as transformers trains it: weighted by `router_aux_loss_coef` when `output_router_logits` is
set, else not at all.
"""

from __future__ import annotations

import dataclasses
import re

from theseus.model.convert import llama
from theseus.model.convert.base import Family, HFTensor, need, refuse
from theseus.model.models.moe import MoE

DENSE = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}
"""Each MoE family's dense counterpart: everything but the MLP converts as that one's."""
PROJECTIONS = {  # theseus expert weight: its name per expert, for Mixtral and for Qwen
    "expert_gate": ("w1", "gate_proj"),
    "expert_up": ("w3", "up_proj"),
    "expert_down": ("w2", "down_proj"),
}
_DENSE_MLP = re.compile(r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight")


def moe_layers(config: dict, n_layer: int) -> list[int]:
    """The layers transformers gives a mixture of experts (Qwen: not in `mlp_only_layers`,
    and every `decoder_sparse_step`-th; Mixtral: all)."""
    dense, step = set(config.get("mlp_only_layers") or []), int(config.get("decoder_sparse_step") or 1)
    return [i for i in range(n_layer) if i not in dense and (i + 1) % step == 0]


def from_hf(config: dict) -> dict:
    model_type = config.get("model_type")
    mixtral, activation = model_type == "mixtral", config.get("hidden_act", "silu")
    refuse(activation != "silu", f"{model_type} hidden_act {activation!r} is not supported (only silu)")
    refuse(float(config.get("router_jitter_noise") or 0.0) > 0, "mixtral router_jitter_noise > 0 is not supported")
    # transformers 5 writes num_local_experts for Mixtral and Qwen3-MoE, whose older files say num_experts
    experts = config.get("num_local_experts") or need(config, "num_experts")
    refuse(experts < 1, f"{model_type} with num_experts={experts} has no mixture of experts; use its dense family")
    expert_width = need(config, "intermediate_size" if mixtral else "moe_intermediate_size")
    kw = llama.from_hf(
        {
            **config,
            "model_type": DENSE[model_type],
            "intermediate_size": config.get("intermediate_size") or expert_width,
        }
    )
    if model_type == "qwen2_moe":  # unlike Qwen2's, its q/k/v biases are a setting
        kw["qkv_bias"] = bool(config.get("qkv_bias", True))
    sparse = moe_layers(config, kw["n_layer"])
    aux = float(config.get("router_aux_loss_coef", 0.001)) if config.get("output_router_logits") else 0.0
    return dict(
        kw,
        n_experts=experts,
        top_k=need(config, "num_experts_per_tok"),
        n_embd_expert=expert_width,
        norm_topk_prob=mixtral or bool(config.get("norm_topk_prob", False)),
        n_embd_shared=int(config.get("shared_expert_intermediate_size") or 0) if model_type == "qwen2_moe" else 0,
        gated_shared=model_type == "qwen2_moe",
        capacity_factor=None,
        aux_loss_weight=aux,
        z_loss_weight=0.0,
        dense_layers=[i for i in range(kw["n_layer"]) if i not in sparse],
    )


def _expert_width(kw: dict) -> int:
    return kw["n_embd_expert"] or kw["n_embd_ff"]


def _routing(kw: dict) -> dict:
    """The config.json entries of routing and its training loss, common to the three."""
    found = {"num_experts_per_tok": kw["top_k"], "output_router_logits": kw["aux_loss_weight"] > 0}
    return found | ({"router_aux_loss_coef": kw["aux_loss_weight"]} if kw["aux_loss_weight"] > 0 else {})


def _no_shared(kw: dict, model_type: str) -> None:
    refuse(kw["n_embd_shared"] > 0, f"a {model_type} model has no shared expert (n_embd_shared must be 0)")


def _qwen(kw: dict) -> dict:
    return dict(
        _routing(kw),
        num_experts=kw["n_experts"],
        moe_intermediate_size=_expert_width(kw),
        norm_topk_prob=kw["norm_topk_prob"],
        mlp_only_layers=list(kw["dense_layers"]),
        decoder_sparse_step=1,
    )


def mixtral_to_hf(kw: dict) -> dict:
    _no_shared(kw, "mixtral")
    refuse(bool(kw["dense_layers"]), "a mixtral model has a mixture of experts in every layer (dense_layers: [])")
    refuse(not kw["norm_topk_prob"], "a mixtral model renormalises its top-k weights (norm_topk_prob must be true)")
    return dict(
        llama.mistral_to_hf(kw),
        **_routing(kw),
        intermediate_size=_expert_width(kw),
        num_local_experts=kw["n_experts"],
        router_jitter_noise=0.0,
    )


def qwen2_moe_to_hf(kw: dict) -> dict:
    llama._no(kw, "qwen2_moe", "out_bias", "mlp_bias", "qk_norm")
    refuse(
        kw["n_embd_shared"] == 0 or not kw["gated_shared"],
        "a qwen2_moe model has a shared expert with a sigmoid gate (n_embd_shared > 0, gated_shared: true)",
    )
    return dict(
        llama._common(kw),
        **llama._qwen_window(kw),
        **_qwen(kw),
        qkv_bias=kw["qkv_bias"],
        shared_expert_intermediate_size=kw["n_embd_shared"],
    )


def qwen3_moe_to_hf(kw: dict) -> dict:
    _no_shared(kw, "qwen3_moe")
    return dict(llama.qwen3_to_hf(kw), **_qwen(kw), num_local_experts=kw["n_experts"])  # the 5.x spelling too


def _experts(kw: dict, model_type: str, layer: int) -> list[HFTensor]:
    """The tensors of layer `layer`'s mixture of experts."""
    width, hidden, n = kw["n_embd"], _expert_width(kw), kw["n_experts"]
    mixtral = model_type == "mixtral"
    hf, ours = f"model.layers.{layer}.{'block_sparse_moe' if mixtral else 'mlp'}.", f"block_{layer}/mlp/"
    found = [HFTensor(hf + "gate.weight", (n, width), (ours + "router/kernel",), transpose=True)]
    for part, names in PROJECTIONS.items():
        shape = (width, hidden) if part == "expert_down" else (hidden, width)
        name = names[0] if mixtral else names[1]
        found += [
            HFTensor(f"{hf}experts.{e}.{name}.weight", shape, (ours + part,), transpose=True, index=e) for e in range(n)
        ]
    if kw["n_embd_shared"]:
        shared = kw["n_embd_shared"]
        found += [
            HFTensor(hf + "shared_expert.gate_proj.weight", (shared, width), (ours + "shared/gate/kernel",), True),
            HFTensor(hf + "shared_expert.up_proj.weight", (shared, width), (ours + "shared/up/kernel",), True),
            HFTensor(hf + "shared_expert.down_proj.weight", (width, shared), (ours + "shared/down/kernel",), True),
        ]
        if kw["gated_shared"]:
            found.append(HFTensor(hf + "shared_expert_gate.weight", (1, width), (ours + "shared_gate/kernel",), True))
    return found


def _tensors(model_type: str):
    def tensors(kw: dict) -> list[HFTensor]:
        """The dense family's tensors, each MoE layer's MLP replaced (where its down projection was)."""
        found = []
        for tensor in llama.tensors(kw):
            match = _DENSE_MLP.fullmatch(tensor.name)
            if match is None or int(match[1]) in kw["dense_layers"]:
                found.append(tensor)
            elif match[2] == "down":
                found += _experts(kw, model_type, int(match[1]))
        return found

    return tensors


def _family(model_type: str, architecture: str, to_hf) -> Family:
    """A MoE family: its dense counterpart's checkpoint prefix and buffers."""
    return dataclasses.replace(
        llama.MISTRAL,
        model_type=model_type,
        architecture=architecture,
        model=MoE,
        from_hf=from_hf,
        to_hf=to_hf,
        tensors=_tensors(model_type),
    )


MIXTRAL = _family("mixtral", "MixtralForCausalLM", mixtral_to_hf)
QWEN2_MOE = _family("qwen2_moe", "Qwen2MoeForCausalLM", qwen2_moe_to_hf)
QWEN3_MOE = _family("qwen3_moe", "Qwen3MoeForCausalLM", qwen3_moe_to_hf)
