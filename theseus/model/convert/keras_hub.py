"""theseus models -> keras-hub presets, one `KerasHubFamily` per keras-hub family.

A native `GPT` goes to keras-hub's GPT-2; a `Llama` (native, or any Hugging Face family
theseus reads) to Llama 3, Qwen (Qwen2) or Qwen3, the first whose settings it matches.
Each family declares its backbone's arguments and how theseus weight paths become the
backbone's (`block_0/attn/query/kernel` -> `transformer_layer_0/self_attention/query/kernel`);
every weight is reshaped into keras-hub's per-head layout, and every backbone weight must
be filled. The tokenizer becomes the family's byte-level BPE tokenizer (vocabulary + merges):
theseus's byte tokenizer is the 256 bytes with no merges; a Hugging Face tokenizer.json must
be a byte-level BPE. What keras-hub cannot express (SentencePiece tokenizers, Mistral's
window, rope scaling, biases a family lacks) is refused in one line naming the setting.

Text in, text out, keras-hub differs from `theseus generate` in two ways of its own: GPT-2's
and Llama 3's preprocessors put their start token before a prompt (theseus does not), and
keras-hub pads prompts with id 0 and ends a row whose padding holds a stop token, so a Qwen
tokenizer whose EOS is id 0 generates nothing from text. On token ids the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from theseus.config import ConfigError
from theseus.model.convert import model_kwargs
from theseus.model.convert.base import refuse
from theseus.model.models.gpt import GPT
from theseus.model.models.llama import Llama

Renames = tuple[tuple[str, str], ...]

GPT2_RENAMES: Renames = (  # theseus path pattern -> keras-hub path
    (r"wte/embeddings", "token_embedding/embeddings"),
    (r"wpe/embeddings", "position_embedding/embeddings"),
    (r"block_(\d+)/ln_1/(\w+)", r"transformer_layer_\1/self_attention_layer_norm/\2"),
    (r"block_(\d+)/attn/output/(\w+)", r"transformer_layer_\1/self_attention/attention_output/\2"),
    (r"block_(\d+)/attn/(query|key|value)/(\w+)", r"transformer_layer_\1/self_attention/\2/\3"),
    (r"block_(\d+)/ln_2/(\w+)", r"transformer_layer_\1/feedforward_layer_norm/\2"),
    (r"block_(\d+)/mlp/up/(\w+)", r"transformer_layer_\1/feedforward_intermediate_dense/\2"),
    (r"block_(\d+)/mlp/down/(\w+)", r"transformer_layer_\1/feedforward_output_dense/\2"),
    (r"ln_f/(\w+)", r"layer_norm/\1"),
)
LLAMA_RENAMES: Renames = (  # Llama 3, Qwen and Qwen3 name their weights alike
    (r"wte/embeddings", "token_embedding/embeddings"),
    (r"lm_head", "token_embedding/reverse_embeddings"),
    (r"block_(\d+)/ln_1/gamma", r"transformer_layer_\1/self_attention_layernorm/scale"),
    (r"block_(\d+)/attn/output/(\w+)", r"transformer_layer_\1/self_attention/attention_output/\2"),
    (r"block_(\d+)/attn/(query|key)_norm/gamma", r"transformer_layer_\1/self_attention/\2_dense_layernorm/scale"),
    (r"block_(\d+)/attn/(query|key|value)/(\w+)", r"transformer_layer_\1/self_attention/\2/\3"),
    (r"block_(\d+)/ln_2/gamma", r"transformer_layer_\1/feedforward_layernorm/scale"),
    (r"block_(\d+)/mlp/up/(\w+)", r"transformer_layer_\1/feedforward_intermediate_dense/\2"),
    (r"block_(\d+)/mlp/gate/(\w+)", r"transformer_layer_\1/feedforward_gate_dense/\2"),
    (r"block_(\d+)/mlp/down/(\w+)", r"transformer_layer_\1/feedforward_output_dense/\2"),
    (r"ln_f/gamma", "sequence_output_layernorm/scale"),
)


@dataclasses.dataclass(frozen=True)
class KerasHubFamily:
    """A keras-hub causal-LM family and how a theseus model becomes one.

    Args:
        name: keras-hub's class prefix (`GPT2` names `GPT2Backbone`, `GPT2CausalLM`, ...).
        model: the theseus model class it takes.
        backbone: the model's constructor arguments -> the backbone's (ConfigError if the
            family cannot express them).
        renames: theseus weight path pattern -> backbone weight path, first match wins.
        end_token: the token keras-hub's tokenizer of the family ends text with (theseus's EOS).
        special_tokens: other tokens the family's tokenizer wants in its vocabulary.
    """

    name: str
    model: type
    backbone: Callable[[dict], dict]
    renames: Renames
    end_token: str
    special_tokens: tuple[str, ...] = ()

    def keras_hub_path(self, path: str) -> str | None:
        for pattern, replacement in self.renames:
            if re.fullmatch(pattern, path):
                return re.sub(pattern, replacement, path)
        return None


def gpt2_backbone(kw: dict) -> dict:
    refuse(kw["position"] != "learned", "keras-hub's GPT-2 has learned positions (this GPT uses rope)")
    refuse(not kw["bias"], "keras-hub's GPT-2 has biases (this GPT has bias=false)")
    refuse(not kw["tie_embeddings"], "keras-hub's GPT-2 ties its head to the embedding (tie_embeddings=false)")
    refuse(kw["activation"] != "gelu_tanh", f"keras-hub's GPT-2 uses gelu_tanh, not {kw['activation']}")
    refuse(kw["norm_eps"] != 1e-5, f"keras-hub's GPT-2 has LayerNorm epsilon 1e-5, not {kw['norm_eps']}")
    return dict(
        vocabulary_size=kw["vocab_size"],
        num_layers=kw["n_layer"],
        num_heads=kw["n_head"],
        hidden_dim=kw["n_embd"],
        intermediate_dim=kw["n_embd_ff"] or 4 * kw["n_embd"],
        dropout=kw["dropout"],
        max_sequence_length=kw["block_size"],
    )


def _llama_like(kw: dict, family: str, head_dim: bool = False, scaling: bool = False) -> dict:
    refuse(
        kw["rope_scaling"] is not None and not scaling, f"keras-hub {family} has no rope_scaling ({kw['rope_scaling']})"
    )
    refuse(kw["sliding_window"] is not None, f"keras-hub {family}: a sliding attention window is not exported")
    refuse(kw["out_bias"] or kw["mlp_bias"], f"keras-hub {family} has no output or MLP biases")
    refuse(
        not head_dim and kw["head_dim"] * kw["n_head"] != kw["n_embd"],
        f"keras-hub {family} has head_dim = n_embd / n_head ({kw['head_dim']} here)",
    )
    return dict(
        vocabulary_size=kw["vocab_size"],
        num_layers=kw["n_layer"],
        num_query_heads=kw["n_head"],
        num_key_value_heads=kw["n_kv_head"],
        hidden_dim=kw["n_embd"],
        intermediate_dim=kw["n_embd_ff"],
        rope_max_wavelength=kw["rope_theta"],
        layer_norm_epsilon=kw["norm_eps"],
        tie_word_embeddings=kw["tie_embeddings"],
        **({"head_dim": kw["head_dim"]} if head_dim else {}),
    )


def llama3_backbone(kw: dict) -> dict:
    refuse(kw["qkv_bias"] or kw["qk_norm"], "keras-hub Llama 3 has no q/k/v biases and no q/k norms")
    scaling = dict(kw["rope_scaling"] or {"rope_type": "llama3"})
    refuse(scaling.get("rope_type") != "llama3", f"keras-hub Llama 3 scales rope as llama3 only, not {scaling}")
    adjustment = {new: scaling[old] for old, new in LLAMA3_SCALING.items() if old in scaling}
    return {**_llama_like(kw, "Llama 3", scaling=True), **adjustment}


def qwen_backbone(kw: dict) -> dict:
    refuse(not kw["qkv_bias"] or kw["qk_norm"], "keras-hub Qwen has q/k/v biases and no q/k norms")
    return _llama_like(kw, "Qwen")


def qwen3_backbone(kw: dict) -> dict:
    refuse(not kw["qk_norm"] or kw["qkv_bias"], "keras-hub Qwen3 has q/k norms and no q/k/v biases")
    return {**_llama_like(kw, "Qwen3", head_dim=True), "sliding_window_size": None}


LLAMA3_SCALING = {  # theseus rope_scaling entry: LlamaBackbone argument
    "factor": "rope_frequency_adjustment_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_pretraining_sequence_length",
}
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
KERAS_HUB_FAMILIES: tuple[KerasHubFamily, ...] = (
    KerasHubFamily("GPT2", GPT, gpt2_backbone, GPT2_RENAMES, "<|endoftext|>"),
    KerasHubFamily("Llama3", Llama, llama3_backbone, LLAMA_RENAMES, "<|end_of_text|>", LLAMA3_SPECIALS),
    KerasHubFamily("Qwen", Llama, qwen_backbone, LLAMA_RENAMES, "<|endoftext|>"),
    KerasHubFamily("Qwen3", Llama, qwen3_backbone, LLAMA_RENAMES, "<|im_end|>", ("<|endoftext|>",)),
)


def keras_hub_family(model: Any) -> KerasHubFamily:
    """The first keras-hub family that expresses `model` (a `GPT` or `Llama`), or a ConfigError."""
    reasons = []
    for family in KERAS_HUB_FAMILIES:
        if type(model) is family.model:  # a subclass (the mixture-of-experts `MoE`) has none
            try:
                family.backbone(model_kwargs(model))
                return family
            except ConfigError as error:
                reasons.append(str(error))
    if not reasons:
        raise ConfigError(f"{type(model).__name__} has no keras-hub counterpart (a GPT or a Llama-family model has)")
    raise ConfigError(f"no keras-hub family expresses this {type(model).__name__}: {'; '.join(reasons)}")


# ----------------------------------------------------------------------------- tokenizer


def byte_level_bpe(tokenizer: Any) -> tuple[dict[str, int], list[str]]:
    """`tokenizer` (theseus's byte tokenizer, or one with a Hugging Face `.tokenizer`) as a
    byte-level BPE vocabulary (token -> id, special tokens included) and merges (`"a b"`)."""
    if getattr(tokenizer, "name", None) == "byte":
        from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

        bytes_, chars = bytes_to_unicode()
        vocabulary = {char: byte[0] for byte, char in zip(bytes_, chars)}
        # keras-hub refuses an empty merge list: one merge of two bytes no UTF-8 text holds never fires
        unused = "".join(chars[bytes_.index(bytes([b]))] for b in (0xC0, 0xC1))
        extra = {"<|endoftext|>": tokenizer.eos_id, unused: tokenizer.vocab_size}
        return {**vocabulary, **extra}, [" ".join(unused)]
    backend = getattr(getattr(tokenizer, "tokenizer", None), "backend_tokenizer", None)
    refuse(backend is None, f"tokenizer {getattr(tokenizer, 'name', tokenizer)!r} has no tokenizer.json to export")
    spec = json.loads(backend.to_str())
    kind = spec["model"]["type"]
    refuse(kind != "BPE", f"a {kind} tokenizer has no keras-hub byte-level BPE counterpart")
    refuse(
        '"ByteLevel"' not in json.dumps(spec.get("pre_tokenizer")),
        "only a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen) exports to keras-hub; this one "
        "splits text another way (a SentencePiece-style tokenizer: keras-hub's Llama 2 / Mistral need a .model file)",
    )
    vocabulary = dict(spec["model"]["vocab"])
    vocabulary.update({added["content"]: added["id"] for added in spec.get("added_tokens", [])})
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return vocabulary, merges


def family_vocabulary(family: KerasHubFamily, vocabulary: dict[str, int], eos_id: int, size: int) -> dict[str, int]:
    """`vocabulary` as `family`'s tokenizer wants it: theseus's EOS id named the family's end
    token (a name it had elsewhere swaps to the old EOS name), and each special token the
    family needs and the vocabulary lacks at a free id below the model's `size`."""
    names = {i: token for token, i in vocabulary.items()}
    refuse(max(names) >= size, f"the tokenizer's ids reach {max(names)}, past the model's {size} rows")
    old_end, moved = names.get(eos_id), vocabulary.get(family.end_token)
    names[eos_id] = family.end_token
    if moved is not None and moved != eos_id:
        names[moved] = old_end
    missing = [token for token in family.special_tokens if token not in names.values()]
    free = [i for i in range(size) if i not in names][: len(missing)]
    refuse(
        len(free) < len(missing),
        f"keras-hub {family.name}'s tokenizer needs {missing} in its vocabulary, and the model's "
        f"{size} rows have {len(free)} free",
    )
    names.update(zip(free, missing))
    return {token: i for i, token in sorted(names.items())}


# ----------------------------------------------------------------------------- preset


def keras_hub_model(model: Any, tokenizer: Any) -> Any:
    """A keras-hub `CausalLM` (backbone, preprocessor, tokenizer) equal to `model`, a built `GPT`
    or `Llama` (an `HFCompat`'s architecture included), with `tokenizer` as the family's."""
    import keras_hub

    architecture = getattr(model, "architecture", model)
    family = keras_hub_family(architecture)
    kwargs = model_kwargs(architecture)
    vocabulary, merges = byte_level_bpe(tokenizer)
    vocabulary = family_vocabulary(family, vocabulary, int(tokenizer.eos_id), kwargs["vocab_size"])
    backbone = getattr(keras_hub.models, f"{family.name}Backbone")(**family.backbone(kwargs), dtype="float32")
    _copy_weights(family, architecture, backbone)
    hub_tokenizer = getattr(keras_hub.models, f"{family.name}Tokenizer")(vocabulary=vocabulary, merges=merges)
    preprocessor = getattr(keras_hub.models, f"{family.name}CausalLMPreprocessor")(
        tokenizer=hub_tokenizer, sequence_length=kwargs["block_size"]
    )
    return getattr(keras_hub.models, f"{family.name}CausalLM")(backbone=backbone, preprocessor=preprocessor)


def _copy_weights(family: KerasHubFamily, architecture: Any, backbone: Any) -> None:
    import keras

    from theseus.model.huggingface import relative_paths

    targets = {v.path: v for v in backbone.weights}
    filled = set()
    for path, variable in relative_paths(architecture).items():
        target = targets.get(family.keras_hub_path(path))
        if target is None:
            raise ConfigError(f"keras-hub {family.name}: theseus weight {path} has no place in the backbone")
        value = np.asarray(keras.ops.convert_to_numpy(variable.value), dtype="float32")
        if value.size != int(np.prod(target.shape)):
            raise ConfigError(
                f"keras-hub {family.name}: {path} {value.shape} does not fill {target.path} {target.shape}"
            )
        target.assign(value.reshape(target.shape))
        filled.add(target.path)
    unfilled = sorted(set(targets) - filled)
    refuse(bool(unfilled), f"keras-hub {family.name}: no theseus weight fills {unfilled[:3]}")


def save_keras_hub(model: Any, folder: str | os.PathLike, tokenizer: Any, overwrite: bool = False) -> Path:
    """Write `model` and `tokenizer` as a keras-hub preset folder, which
    `keras_hub.models.CausalLM.from_preset(folder)` loads offline; the folder."""
    from theseus.model.huggingface import _written_in_place_of

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(f"{folder} exists and is not empty; pass overwrite (--force) to replace it")
    causal_lm = keras_hub_model(model, tokenizer)
    with _written_in_place_of(folder) as temporary:
        causal_lm.save_to_preset(str(temporary))
    return folder
