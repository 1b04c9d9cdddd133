"""GPT-2 (`GPT2LMHeadModel`) <-> theseus `GPT`.

GPT-2 is `GPT` with its defaults. Hugging Face keeps GPT-2's projections as `Conv1D`,
stored `(in, out)` like theseus kernels, and fuses q, k and v into one `c_attn`
`(C, 3C)`, cut here into theseus's three projections.
"""

from __future__ import annotations

from theseus.model.convert.base import Family, HFTensor, need, refuse, renamed
from theseus.model.models.gpt import GPT

ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
HF_NAMES = {  # theseus argument: config.json entry
    "vocab_size": "vocab_size",
    "block_size": "n_positions",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_embd": "n_embd",
    "dropout": "resid_pdrop",
    "norm_eps": "layer_norm_epsilon",
    "tie_embeddings": "tie_word_embeddings",
}
TO_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def from_hf(config: dict) -> dict:
    activation = config.get("activation_function", "gelu_new")
    refuse(
        activation not in ACTIVATIONS,
        f"gpt2 activation_function {activation!r} is not supported; supported: {sorted(ACTIVATIONS)}",
    )
    refuse(not config.get("scale_attn_weights", True), "gpt2 with scale_attn_weights=false is not supported")
    refuse(
        config.get("scale_attn_by_inverse_layer_idx", False),
        "gpt2 with scale_attn_by_inverse_layer_idx is not supported",
    )
    refuse(config.get("add_cross_attention", False), "gpt2 with cross-attention is not a decoder-only model")
    return dict(
        vocab_size=need(config, "vocab_size"),
        block_size=need(config, "n_positions"),
        n_layer=need(config, "n_layer"),
        n_head=need(config, "n_head"),
        n_embd=need(config, "n_embd"),
        n_embd_ff=config.get("n_inner") or 4 * config["n_embd"],
        dropout=float(config.get("resid_pdrop", 0.1)),
        bias=True,
        tie_embeddings=config.get("tie_word_embeddings", True),
        position="learned",
        activation=ACTIVATIONS[activation],
        norm_eps=config.get("layer_norm_epsilon", 1e-5),
    )


def to_hf(kw: dict) -> dict:
    refuse(kw["position"] != "learned", "only a GPT with learned positions is a GPT-2 (this one uses rope)")
    refuse(not kw["bias"], "only a GPT with biases is a GPT-2 (this one has bias=false)")
    return dict(
        renamed(kw, HF_NAMES),
        n_inner=kw["n_embd_ff"] or 4 * kw["n_embd"],
        activation_function=TO_HF_ACTIVATION[kw["activation"]],
        embd_pdrop=kw["dropout"],
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
    )


def tensors(kw: dict) -> list[HFTensor]:
    width, vocab = kw["n_embd"], kw["vocab_size"]
    hidden = kw["n_embd_ff"] or 4 * width
    found = [
        HFTensor("transformer.wte.weight", (vocab, width), ("wte/embeddings",)),
        HFTensor("transformer.wpe.weight", (kw["block_size"], width), ("wpe/embeddings",)),
    ]
    for i in range(kw["n_layer"]):
        hf, ours = f"transformer.h.{i}.", f"block_{i}/"
        qkv = tuple(f"{ours}attn/{p}" for p in ("query", "key", "value"))
        found += [
            HFTensor(hf + "ln_1.weight", (width,), (ours + "ln_1/gamma",)),
            HFTensor(hf + "ln_1.bias", (width,), (ours + "ln_1/beta",)),
            HFTensor(hf + "attn.c_attn.weight", (width, 3 * width), tuple(p + "/kernel" for p in qkv), split_axis=1),
            HFTensor(hf + "attn.c_attn.bias", (3 * width,), tuple(p + "/bias" for p in qkv)),
            HFTensor(hf + "attn.c_proj.weight", (width, width), (ours + "attn/output/kernel",)),
            HFTensor(hf + "attn.c_proj.bias", (width,), (ours + "attn/output/bias",)),
            HFTensor(hf + "ln_2.weight", (width,), (ours + "ln_2/gamma",)),
            HFTensor(hf + "ln_2.bias", (width,), (ours + "ln_2/beta",)),
            HFTensor(hf + "mlp.c_fc.weight", (width, hidden), (ours + "mlp/up/kernel",)),
            HFTensor(hf + "mlp.c_fc.bias", (hidden,), (ours + "mlp/up/bias",)),
            HFTensor(hf + "mlp.c_proj.weight", (hidden, width), (ours + "mlp/down/kernel",)),
            HFTensor(hf + "mlp.c_proj.bias", (width,), (ours + "mlp/down/bias",)),
        ]
    found += [
        HFTensor("transformer.ln_f.weight", (width,), ("ln_f/gamma",)),
        HFTensor("transformer.ln_f.bias", (width,), ("ln_f/beta",)),
    ]
    if not kw["tie_embeddings"]:
        found.append(HFTensor("lm_head.weight", (vocab, width), ("lm_head",), transpose=True))
    return found


GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    model=GPT,
    prefix="transformer.",
    from_hf=from_hf,
    to_hf=to_hf,
    tensors=tensors,
    buffers=r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",
)
