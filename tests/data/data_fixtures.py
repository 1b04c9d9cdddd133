"""Data helpers built on the spot, offline: a small BPE tokenizer folder (trained here with
`tokenizers`, saved as a transformers tokenizer with a chat template)."""

from __future__ import annotations

from theseus.data import embedded_corpus

# ChatML-style, with `{% generation %}` around what the assistant says so that transformers'
# own `return_assistant_tokens_mask` can serve as the reference for theseus's masks (which
# do not use these markers).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(folder, vocab_size: int = 320, documents=None):
    """A byte-level BPE trained on `documents` (default: part of the embedded corpus),
    saved as a transformers tokenizer folder; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(documents or embedded_corpus()[:30], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(folder))
    return folder
