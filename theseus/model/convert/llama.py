"""Llama, Mistral, Qwen2 and Qwen3 <-> theseus `Llama`.

The four share one tensor layout (`torch.nn.Linear` weights stored `(out, in)`, transposed
into theseus kernels) and differ in a few settings: Qwen2 puts biases on q/k/v, Qwen3
normalises query and key heads, Mistral (and Qwen with `use_sliding_window`) limits
attention to a window. Rotary embeddings use the same "rotate half" layout on both sides,
so q and k need no permutation.
"""

from __future__ import annotations

from theseus.model.convert.base import Family, HFTensor, need, refuse, renamed
from theseus.model.models.llama import Llama

HF_NAMES = {  # theseus argument: config.json entry
    "vocab_size": "vocab_size",
    "block_size": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "n_embd": "hidden_size",
    "n_embd_ff": "intermediate_size",
    "head_dim": "head_dim",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
}
ROPE_TYPES = ("default", "linear", "llama3")


def rope(config: dict) -> tuple[float, dict | None]:
    """`(rope_theta, rope_scaling)` from config.json, in transformers 5's `rope_parameters`
    form or the older `rope_theta` + `rope_scaling` one."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "type" in params:  # the oldest spelling of rope_type
        params.setdefault("rope_type", params.pop("type"))
    theta = float(params.pop("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", "default")
    refuse(kind not in ROPE_TYPES, f"rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    refuse(
        float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) != 1.0,
        "partial rotary embeddings (partial_rotary_factor < 1) are not supported",
    )
    params.pop("partial_rotary_factor", None)
    return theta, (params if kind != "default" else None)


def window(config: dict) -> int | None:
    """The sliding attention window every layer uses, or None; mixed layers are refused."""
    if config.get("model_type") in ("qwen2", "qwen3") and not config.get("use_sliding_window", False):
        return None
    size = config.get("sliding_window")
    if size is None:
        return None
    kinds = set(config.get("layer_types") or ["sliding_attention"])
    refuse(len(kinds) > 1, f"layers mixing full and sliding-window attention ({sorted(kinds)}) are not supported")
    return int(size) if kinds == {"sliding_attention"} else None


def from_hf(config: dict) -> dict:
    model_type = config.get("model_type")
    activation = config.get("hidden_act", "silu")
    refuse(activation != "silu", f"{model_type} hidden_act {activation!r} is not supported (only silu)")
    n_head, width = need(config, "num_attention_heads"), need(config, "hidden_size")
    theta, scaling = rope(config)
    # transformers reads `attention_bias` for Llama and Qwen3 only (Qwen2's q/k/v always
    # have biases, Mistral's none) and `mlp_bias` for Llama only
    attention_bias = model_type in ("llama", "qwen3") and bool(config.get("attention_bias", False))
    return dict(
        vocab_size=need(config, "vocab_size"),
        block_size=config.get("max_position_embeddings") or 2048,
        n_layer=need(config, "num_hidden_layers"),
        n_head=n_head,
        n_kv_head=config.get("num_key_value_heads") or n_head,
        n_embd=width,
        n_embd_ff=need(config, "intermediate_size"),
        head_dim=config.get("head_dim") or width // n_head,
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        out_bias=attention_bias,
        mlp_bias=model_type == "llama" and bool(config.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=window(config),
    )


def _common(kw: dict) -> dict:
    return dict(
        renamed(kw, HF_NAMES),
        rope_parameters={"rope_type": "default", **(kw["rope_scaling"] or {}), "rope_theta": kw["rope_theta"]},
        hidden_act="silu",
    )


def _no(kw: dict, model_type: str, *settings: str) -> None:
    for setting in settings:
        refuse(bool(kw[setting]), f"a {model_type} model has no {setting}")


def llama_to_hf(kw: dict) -> dict:
    _no(kw, "llama", "qk_norm", "sliding_window")
    refuse(
        kw["qkv_bias"] != kw["out_bias"], "llama biases all four attention projections or none (qkv_bias = out_bias)"
    )
    return {**_common(kw), "attention_bias": kw["qkv_bias"], "mlp_bias": kw["mlp_bias"]}


def mistral_to_hf(kw: dict) -> dict:
    _no(kw, "mistral", "qkv_bias", "out_bias", "mlp_bias", "qk_norm")
    return {**_common(kw), "sliding_window": kw["sliding_window"]}


def _qwen_window(kw: dict) -> dict:
    size = kw["sliding_window"]
    kind = "sliding_attention" if size else "full_attention"
    return dict(
        use_sliding_window=bool(size),
        sliding_window=size,
        max_window_layers=0 if size else kw["n_layer"],
        layer_types=[kind] * kw["n_layer"],
    )


def qwen2_to_hf(kw: dict) -> dict:
    _no(kw, "qwen2", "out_bias", "mlp_bias", "qk_norm")
    refuse(not kw["qkv_bias"], "a qwen2 model has q/k/v biases (qkv_bias must be true)")
    return {**_common(kw), **_qwen_window(kw)}


def qwen3_to_hf(kw: dict) -> dict:
    _no(kw, "qwen3", "mlp_bias")
    refuse(not kw["qk_norm"], "a qwen3 model normalises query and key heads (qk_norm must be true)")
    refuse(
        kw["qkv_bias"] != kw["out_bias"], "qwen3 biases all four attention projections or none (qkv_bias = out_bias)"
    )
    return {**_common(kw), **_qwen_window(kw), "attention_bias": kw["qkv_bias"]}


def tensors(kw: dict) -> list[HFTensor]:
    width, vocab, head_dim, hidden = kw["n_embd"], kw["vocab_size"], kw["head_dim"], kw["n_embd_ff"]
    q_width, kv_width = kw["n_head"] * head_dim, kw["n_kv_head"] * head_dim
    found = [HFTensor("model.embed_tokens.weight", (vocab, width), ("wte/embeddings",))]
    for i in range(kw["n_layer"]):
        hf, ours = f"model.layers.{i}.", f"block_{i}/"

        def linear(name: str, part: str, out: int, inp: int, bias: bool) -> list[HFTensor]:
            made = [HFTensor(f"{hf}{name}.weight", (out, inp), (f"{ours}{part}/kernel",), transpose=True)]
            return made + ([HFTensor(f"{hf}{name}.bias", (out,), (f"{ours}{part}/bias",))] if bias else [])

        found += [HFTensor(hf + "input_layernorm.weight", (width,), (ours + "ln_1/gamma",))]
        found += linear("self_attn.q_proj", "attn/query", q_width, width, kw["qkv_bias"])
        found += linear("self_attn.k_proj", "attn/key", kv_width, width, kw["qkv_bias"])
        found += linear("self_attn.v_proj", "attn/value", kv_width, width, kw["qkv_bias"])
        found += linear("self_attn.o_proj", "attn/output", width, q_width, kw["out_bias"])
        if kw["qk_norm"]:
            found += [
                HFTensor(hf + "self_attn.q_norm.weight", (head_dim,), (ours + "attn/query_norm/gamma",)),
                HFTensor(hf + "self_attn.k_norm.weight", (head_dim,), (ours + "attn/key_norm/gamma",)),
            ]
        found += [HFTensor(hf + "post_attention_layernorm.weight", (width,), (ours + "ln_2/gamma",))]
        found += linear("mlp.gate_proj", "mlp/gate", hidden, width, kw["mlp_bias"])
        found += linear("mlp.up_proj", "mlp/up", hidden, width, kw["mlp_bias"])
        found += linear("mlp.down_proj", "mlp/down", width, hidden, kw["mlp_bias"])
    found.append(HFTensor("model.norm.weight", (width,), ("ln_f/gamma",)))
    if not kw["tie_embeddings"]:
        found.append(HFTensor("lm_head.weight", (vocab, width), ("lm_head",), transpose=True))
    return found


def _family(model_type: str, architecture: str, to_hf) -> Family:
    return Family(
        model_type=model_type,
        architecture=architecture,
        model=Llama,
        prefix="model.",
        from_hf=from_hf,
        to_hf=to_hf,
        tensors=tensors,
        buffers=r".*rotary_emb\.inv_freq",
    )


LLAMA = _family("llama", "LlamaForCausalLM", llama_to_hf)
MISTRAL = _family("mistral", "MistralForCausalLM", mistral_to_hf)
QWEN2 = _family("qwen2", "Qwen2ForCausalLM", qwen2_to_hf)
QWEN3 = _family("qwen3", "Qwen3ForCausalLM", qwen3_to_hf)
