"""keras-hub backbones as theseus models: `KerasHubLM`, and the one table that shards them.

`KerasHubLM` is a `CausalLM` (token ids -> float32 logits) around a keras-hub causal-LM
backbone: from a local preset folder, or a local Hugging Face folder keras-hub converts
(`architecture/keras_hub/preset`; nothing is downloaded), or from a backbone class and its
`get_config()` (`architecture/keras_hub/backbone` + `architecture/keras_hub/config`), with random
weights. The logits are the backbone's token embedding applied in reverse, as keras-hub's own
`CausalLM` tasks compute them, so theseus's trainer, checkpoints, evaluations and generation
see one more causal LM.

Sharding: every backbone weight gets logical axes from `LAYER_AXES`, one row per kind of
keras-hub layer (embedding, attention query/key/value/output, feed-forward in/out, norms), never
per family, so `topology/strategy` shards any family whose layers use those names. A weight no
row covers keeps no axes: replicated, and named in the error under `topology/strict`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import keras
import yaml
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope

from theseus.config import ConfigError, field
from theseus.model.axes import Axes
from theseus.model.models.causal_lm import CausalLM

PRESET_KEY = "architecture/keras_hub/preset"
BACKBONE_KEY = "architecture/keras_hub/backbone"
CONFIG_KEY = "architecture/keras_hub/config"
NO_LIMIT = 2**30
"""`block_size` of a backbone without learned positions (rotary, ALiBi)."""

E, V, P, FF, Q, KV, OUT = (
    Axes.N_EMBD,
    Axes.VOCAB,
    Axes.BLOCK_SIZE,
    Axes.N_EMBD_FF,
    Axes.N_ATTN,
    Axes.N_KV,
    Axes.N_EMBD_OUT,
)

LAYER_AXES: list[tuple[str, str, list[tuple]]] = [
    # kind, the end of a weight's path (layer/variable), the logical axes it may have (the first
    # whose residual-width dimensions have the backbone's hidden size wins: families order a
    # per-head kernel (hidden, heads, head_dim) or (heads, hidden, head_dim))
    ("token embedding", r"token_embedding/embeddings", [(V, E)]),
    ("output head", r"token_embedding/reverse_embeddings", [(E, V)]),
    ("position embedding", r"position_embedding/embeddings", [(P, E)]),
    ("attention query", r"(query|query_dense)/kernel", [(E, Q, None), (Q, E, None), (E, Q)]),
    ("attention query bias", r"(query|query_dense)/bias", [(Q, None), (Q,)]),
    ("attention key/value", r"(key|value|key_dense|value_dense)/kernel", [(E, KV, None), (KV, E, None), (E, KV)]),
    ("attention key/value bias", r"(key|value|key_dense|value_dense)/bias", [(KV, None), (KV,)]),
    ("attention fused qkv", r"query_key_value/kernel", [(E, Q, None), (E, Q)]),
    ("attention fused qkv bias", r"query_key_value/bias", [(Q, None), (Q,)]),
    ("attention output", r"(attention_output|output_dense)/kernel", [(OUT, None, E), (OUT, E)]),
    (
        "feed-forward in",
        r"(ffw_gating|ffw_gating_2|feedforward_intermediate_dense|feedforward_gate_dense"
        r"|dense_h_to_4h|mlp_intermediate_dense)/kernel",
        [(E, FF)],
    ),
    (
        "feed-forward in bias",
        r"(feedforward_intermediate_dense|feedforward_gate_dense|dense_h_to_4h|mlp_intermediate_dense)/bias",
        [(FF,)],
    ),
    ("feed-forward out", r"(ffw_linear|feedforward_output_dense|dense_4h_to_h|mlp_output_dense)/kernel", [(FF, E)]),
    (
        "output bias",
        r"(attention_output|output_dense|feedforward_output_dense|dense_4h_to_h|mlp_output_dense)/bias",
        [(E,)],
    ),
    ("norm", r"[^/]*(norm|normalization)[^/]*/(scale|gamma|beta)", [(E,), (None,)]),
]
"""One row per kind of keras-hub layer: `(kind, path pattern, candidate logical axes)`."""


def layer_axes(path: str, shape: tuple[int, ...], hidden: int) -> tuple | None:
    """The logical axes `LAYER_AXES` gives the weight at `path` with `shape` in a backbone of
    residual width `hidden`; None when no row covers it."""
    for _, pattern, candidates in LAYER_AXES:
        if re.search(rf"(^|/){pattern}$", path):
            for axes in candidates:
                if len(axes) == len(shape) and all(size == hidden for a, size in zip(axes, shape) if a is E):
                    return axes
            return None
    return None


def read_backbone_config(text: str) -> dict[str, Any]:
    """`architecture/keras_hub/config`: the backbone's `get_config()` as a YAML or JSON mapping,
    or the path of a JSON file holding it (a keras-hub preset's `config.json` counts)."""
    path = Path(text).expanduser()
    if text and path.is_file():
        config = json.loads(path.read_text())
        config = config.get("config", config) if "class_name" in config else config
    else:
        try:
            config = yaml.safe_load(text or "{}")
        except yaml.YAMLError as error:
            raise ConfigError(f"{CONFIG_KEY}: not a YAML mapping: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{CONFIG_KEY}: must be a mapping of the backbone's arguments, got {text!r}")
    return config


def backbone_class(name: str) -> type:
    """The keras-hub backbone class `name` (`GemmaBackbone`, or `Gemma`)."""
    import keras_hub

    cls = getattr(keras_hub.models, name, None) or getattr(keras_hub.models, f"{name}Backbone", None)
    if not (isinstance(cls, type) and issubclass(cls, keras_hub.models.Backbone)):
        models = keras_hub.models
        known = sorted(
            n
            for n in dir(models)
            if n != "Backbone" and n.endswith("Backbone") and hasattr(models, f"{n[:-8]}CausalLM")
        )
        raise ConfigError(f"{BACKBONE_KEY}: {name!r} is no keras-hub backbone; causal-LM ones: {', '.join(known)}")
    return cls


class KerasHubLM(CausalLM):
    """A keras-hub causal-LM backbone as a theseus `CausalLM`: token ids (B, T) -> float32 logits.

    Args:
        preset: a local keras-hub preset folder (`config.json` + weights) or a local Hugging
            Face folder keras-hub converts; its weights load unless `pretrained` is False.
        backbone: instead of `preset`, a keras-hub backbone class name (`GemmaBackbone`),
            built with random weights from `config`.
        config: the backbone's constructor arguments (its `get_config()`), a YAML mapping.
        pretrained: load the preset's weights (default True; pretraining passes False).

    Example:
        >>> model = KerasHubLM(backbone="GemmaBackbone", config="{vocabulary_size: 96, num_layers: 1, ...}")
        >>> logits = model(token_ids)  # (B, T, 96) float32
    """

    preset: str = field(
        PRESET_KEY, default="", help="a local keras-hub preset folder, or a Hugging Face folder keras-hub converts"
    )
    backbone_name: str = field(
        BACKBONE_KEY,
        default="",
        help="instead of a preset: a keras-hub backbone class (e.g. GemmaBackbone), random weights",
    )
    backbone_config: str = field(
        CONFIG_KEY, default="{}", help="the backbone's get_config() as a YAML mapping, or a JSON file holding it"
    )

    def __init__(self, pretrained: bool = True, name: str = "keras_hub_lm", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if bool(self.preset) == bool(self.backbone_name):
            raise ConfigError(f"set exactly one of {PRESET_KEY} and {BACKBONE_KEY}")
        self.pretrained = pretrained
        self.backbone = self._make_backbone()
        hidden = int(self.backbone.hidden_dim)
        for variable in self.backbone.weights:
            variable.logical_axes = layer_axes(variable.path, tuple(variable.shape), hidden)
        self.built = True  # the backbone is built as keras-hub constructs it

    def _make_backbone(self) -> keras.Model:
        import keras_hub

        if self.backbone_name:
            cls, config = backbone_class(self.backbone_name), read_backbone_config(self.backbone_config)
            # a whole `get_config()` (it names its layer) as keras-hub rebuilds one; else the arguments
            return cls.from_config(config) if "name" in config else cls(**config)
        folder = Path(self.preset).expanduser()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ConfigError(f"{PRESET_KEY}: {folder} is not a local preset folder (no config.json)")
        load = self.pretrained and not in_stateless_scope()  # an abstract build reads no weights
        return keras_hub.models.Backbone.from_preset(str(folder), load_weights=load)

    @property
    def vocab_size(self) -> int:
        return int(self.backbone.vocabulary_size)

    @property
    def block_size(self) -> int:
        """The longest context: a backbone's learned positions, else no limit of its own."""
        return int(getattr(self.backbone, "max_sequence_length", None) or NO_LIMIT)

    def build(self, input_shape: Any = None) -> None:
        self.built = True

    def call(self, token_ids, padding_mask=None, training=False):
        if isinstance(token_ids, dict):
            token_ids, padding_mask = token_ids["token_ids"], token_ids.get("padding_mask")
        if padding_mask is None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        hidden = self.backbone({"token_ids": token_ids, "padding_mask": padding_mask}, training=training)
        return ops.cast(self.backbone.token_embedding(hidden, reverse=True), "float32")

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        return (*input_shape, self.vocab_size)

    # Generation (`theseus.generation`): the "cache" is the token buffer itself, and every step
    # runs the backbone over all of it. No keras-hub key/value cache takes theseus's left-padded
    # rows; rotary and ALiBi positions are relative, so a padded row gets the logits it gets alone.

    def init_cache(self, batch_size: int, max_length: int):
        return ops.zeros((batch_size, max_length), "int32")

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask):
        cache = ops.slice_update(cache, [0, cache_index], ops.cast(token_ids, "int32"))
        logits = self.call(cache, padding_mask=padding_mask)  # (B, S, vocab)
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        return ops.slice(logits, [0, cache_index, 0], [batch, length, self.vocab_size]), cache

    # LoRA (`lora/enabled`; `theseus.training.lora` picks the layers by `lora/targets`): Keras's own
    # `enable_lora(rank, lora_alpha)` on the backbone's `Dense` and `EinsumDense` layers, the layers
    # keras-hub's `Backbone.enable_lora` adapts (which would give them no `alpha` of their own).

    def lora_projections(self) -> list[keras.Layer]:
        """The backbone's built layers that take Keras's LoRA adapters, in layer order; a layer's
        path is its kernel's less the name (`decoder_block_0/attention/query`)."""
        kinds = (keras.layers.Dense, keras.layers.EinsumDense)
        return [layer for layer in self.backbone._flatten_layers(include_self=False) if isinstance(layer, kinds)]

    @staticmethod
    def enable_projection_lora(layer: keras.Layer, rank: int, alpha: float) -> None:
        """Keras's LoRA on `layer`, its adapters sharded as its kernel: A `(..., rank)` keeps the
        kernel's leading axes, B `(rank, out)` its last."""
        layer.enable_lora(rank, lora_alpha=alpha)
        axes = getattr(layer._kernel, "logical_axes", None)
        layer.lora_kernel_a.logical_axes = None if axes is None else (*axes[:-1], None)
        layer.lora_kernel_b.logical_axes = None if axes is None else (None, axes[-1])

    @staticmethod
    def merge_projection(layer: keras.Layer) -> None:
        """Fold a layer's adapters into its kernel (`kernel += alpha / rank * A @ B`, what Keras
        saves for it) and drop them: a plain, trainable layer computing the same function."""
        update = ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b) * (layer.lora_alpha / layer.lora_rank)
        layer._kernel.assign(layer._kernel + ops.cast(update, layer._kernel.dtype))
        del layer.lora_kernel_a  # Keras untracks a deleted variable
        del layer.lora_kernel_b
        layer._kernel.trainable = True
        layer.lora_enabled = False
