"""Tiny random Hugging Face checkpoints and tokenizers, built offline with `transformers`,
`torch` and `tokenizers` and saved with `save_pretrained`, as a user's folder would be."""

from __future__ import annotations

from pathlib import Path

VOCAB = 320  # the tokenizer below has 300 tokens (256 bytes, a special, merges): its ids all fit
LENGTH = 12  # the parity tests' sequence length

# One configuration per family, each exercising what sets it apart.
CONFIGS = {
    "gpt2": dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, tie_word_embeddings=True),
    "llama": dict(  # grouped-query heads, Llama 3 rope scaling (small original context so it bites), untied
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
    "mistral": dict(  # a sliding window shorter than the test sequences
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=5,
    ),
    "qwen2": dict(  # q/k/v biases, tied embeddings
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    ),
    "qwen3": dict(  # q/k norms, head_dim * heads != hidden_size
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    ),
}
FAMILIES = tuple(CONFIGS)

# The mixture-of-experts families (theseus `MoE`), apart from FAMILIES: tests of the dense ones run over FAMILIES.
MOE_CONFIGS = {
    "mixtral": dict(  # top-2 of 4 experts, renormalised; a sliding window shorter than the test sequences
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=5,
    ),
    "qwen2_moe": dict(  # q/k/v biases, tied embeddings, a gated shared expert, top-k weights not renormalised
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        tie_word_embeddings=True,
    ),
    "qwen3_moe": dict(  # q/k norms, head_dim * heads != hidden_size, top-3 of 6 renormalised
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=True,
    ),
}
MOE_FAMILIES = tuple(MOE_CONFIGS)


def hf_model(family: str, seed: int = 0, **overrides):
    """A random `transformers` model of `family` (its `CONFIGS` entry with `overrides`) in
    eval mode, every parameter perturbed (norm scales around 1, biases non-zero) so that a
    misplaced tensor cannot go unseen."""
    import torch
    import transformers

    config_class = transformers.AutoConfig.for_model(family, **{**(CONFIGS | MOE_CONFIGS)[family], **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_class, attn_implementation="eager")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = 0.1 * torch.randn_like(parameter)
            is_scale = ("norm" in name or ".ln_" in name) and name.endswith("weight")
            parameter.copy_(1.0 + noise if is_scale else noise * 2 if name.endswith("weight") else noise)
    return model.eval()


def tokenizer(folder: Path | None = None, chat_template: str | None = None):
    """A byte-level BPE (fewer than `VOCAB` tokens) trained on a few sentences, as a
    `transformers` fast tokenizer with `<|endoftext|>` as EOS; saved to `folder` if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = ["the quick brown fox jumps over the lazy dog", "a tokenizer for tests, trained offline"] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat_template is not None:
        fast.chat_template = chat_template
    if folder is not None:
        fast.save_pretrained(str(folder))
    return fast


def save_checkpoint(folder: Path, family: str, *, seed: int = 0, with_tokenizer: bool = True, **kwargs) -> Path:
    """`hf_model(family)` saved to `folder` with `save_pretrained` (plus the tokenizer)."""
    model = hf_model(family, seed)
    model.save_pretrained(str(folder), **kwargs)
    if with_tokenizer:
        tokenizer(folder)
    return Path(folder)


def token_batch():
    """Three rows: full, left-padded by 4 and right-padded by 3 (mask true on real tokens)."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, VOCAB, (3, LENGTH)).astype("int32")
    mask = np.ones((3, LENGTH), bool)
    mask[1, :4] = False
    mask[2, -3:] = False
    return ids, mask


def reference_logits(model, ids, mask=None):
    """`transformers` logits; with a mask, positions count real tokens (as when a row runs alone)."""
    import numpy as np
    import torch

    with torch.no_grad():
        if mask is None:
            return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        return model(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
