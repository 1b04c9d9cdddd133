"""theseus models as keras-hub presets: a native GPT (byte tokenizer) and the Llama, Qwen2 and
Qwen3 Hugging Face families (their byte-level BPE tokenizer) load with
`keras_hub.models.CausalLM.from_preset`, with theseus's logits (float32, 1e-5) and its greedy
tokens; what keras-hub cannot express is refused in one line."""

import numpy as np
import pytest
from hf_checkpoints import VOCAB, hf_model, save_checkpoint
from hf_checkpoints import tokenizer as bpe_tokenizer

from theseus.config import ConfigError
from theseus.data import ByteTokenizer
from theseus.data.tokenizers import HFTokenizer
from theseus.evaluation.language_model import LanguageModel
from theseus.model.convert.keras_hub import byte_level_bpe, keras_hub_family, save_keras_hub
from theseus.model.huggingface import HFCompat
from theseus.model.models import GPT, Llama, MoE

PROMPT = "the quick brown fox"
TOLERANCE = {"qwen3": 1e-4}
"""keras-hub's Qwen3 differs from transformers by 4.4e-5 on this folder (theseus: 4e-6), its
own conversion of the folder as much: there the test also compares with that conversion."""
HUB_CLASSES = {"gpt": "GPT2CausalLM", "llama": "Llama3CausalLM", "qwen2": "QwenCausalLM", "qwen3": "Qwen3CausalLM"}


def perturbed_gpt() -> GPT:
    """A tiny GPT with every weight moved off its initial value (norms around 1, biases non-zero)."""
    model = GPT(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model.build((None, None))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        noise = rng.normal(0.0, 0.1, variable.shape).astype("float32")
        variable.assign(noise + (1.0 if variable.path.endswith("gamma") else np.asarray(variable.value)))
    return model


def source(family: str, folder):
    """The model and theseus tokenizer of `family`: a native GPT with bytes, or a Hugging Face folder."""
    if family == "gpt":
        return perturbed_gpt(), ByteTokenizer()
    if family == "llama":  # Llama 3's rope scaling: its own test below
        hf_model("llama", rope_scaling=None).save_pretrained(str(folder))
        bpe_tokenizer(folder)
    path = folder if family == "llama" else save_checkpoint(folder, family)
    return HFCompat(id=str(path)), HFTokenizer(path)


def hub_greedy(causal_lm, prompt: list[int], new: int, stop: list[int]) -> list[int]:
    """keras-hub's greedy `generate` on token ids (its preprocessor detached): the new tokens."""
    preprocessor, causal_lm.preprocessor = causal_lm.preprocessor, None
    pad = 1 if 0 in stop else 0  # keras-hub's sampler takes a stop token in the padding for a finished row
    try:
        out = causal_lm.generate(
            {
                "token_ids": np.array([prompt + [pad] * new], "int32"),
                "padding_mask": np.array([[True] * len(prompt) + [False] * new]),
            },
            stop_token_ids=stop or None,
        )
    finally:
        causal_lm.preprocessor = preprocessor
    tokens, mask = (np.asarray(out[k])[0, len(prompt) :] for k in ("token_ids", "padding_mask"))
    return tokens[mask].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(HUB_CLASSES))
def test_a_preset_has_theseus_logits_tokens_and_greedy_generations(family, tmp_path):
    import keras_hub

    model, tokenizer = source(family, tmp_path / "hf")
    folder = save_keras_hub(model, tmp_path / "preset", tokenizer)
    hub = keras_hub.models.CausalLM.from_preset(str(folder))
    assert type(hub).__name__ == HUB_CLASSES[family]
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 16)).astype("int32")
    theirs = np.asarray(hub({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}))
    ours = np.asarray(model(ids))
    assert ours.std() > 0.1  # logits that say something
    np.testing.assert_allclose(theirs, ours, atol=TOLERANCE.get(family, 1e-5), rtol=0)
    if family in TOLERANCE:  # keras-hub's own conversion of the folder: the export's logits exactly
        backbone = keras_hub.models.Backbone.from_preset(str(tmp_path / "hf"))
        hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)})
        np.testing.assert_allclose(theirs, np.asarray(backbone.token_embedding(hidden, reverse=True)), atol=1e-6)

    lm = LanguageModel(model, tokenizer)
    prompt = lm.encode(PROMPT)
    assert np.asarray(hub.preprocessor.tokenizer(PROMPT)).tolist() == prompt
    hub.compile(sampler="greedy")
    expected = lm.generator([prompt], 12, stop_token_ids=[tokenizer.eos_id]).tokens[0]
    assert hub_greedy(hub, prompt, 12, [tokenizer.eos_id]) == expected
    hub_tokenizer = hub.preprocessor.tokenizer
    # with no start token (Qwen's) the prompt goes in as theseus encodes it; keras-hub pads with
    # pad_token_id, which must not be the EOS (Qwen2's is 0, this tokenizer's EOS too)
    if hub_tokenizer.start_token_id is None and hub_tokenizer.pad_token_id != hub_tokenizer.end_token_id:
        text = hub.generate(PROMPT, max_length=len(prompt) + 12)
        assert text == PROMPT + lm.generate([PROMPT], 12)[0]


@pytest.mark.slow
def test_llama_3_rope_scaling_carries_over(tmp_path):
    """The Llama test folder's rope scaling (original context 8, so it bites on 16 tokens) becomes
    keras-hub's frequency adjustment: the same logits up to float32 rounding of the frequencies."""
    import keras_hub

    model = HFCompat(id=str(save_checkpoint(tmp_path / "hf", "llama")))
    hub = keras_hub.models.CausalLM.from_preset(str(save_keras_hub(model, tmp_path / "preset", ByteTokenizer())))
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 16)).astype("int32")
    theirs = np.asarray(hub({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}))
    np.testing.assert_allclose(theirs, np.asarray(model(ids)), atol=1e-4, rtol=0)


def test_what_keras_hub_cannot_express_is_one_line():
    for kwargs, message in [
        (dict(position="rope"), "keras-hub's GPT-2 has learned positions"),
        (dict(tie_embeddings=False), "ties its head to the embedding"),
        (dict(activation="relu"), "uses gelu_tanh, not relu"),
    ]:
        with pytest.raises(ConfigError, match=message):
            keras_hub_family(GPT(n_layer=1, **kwargs))
    with pytest.raises(ConfigError, match="no keras-hub family expresses this Llama: .*sliding attention window"):
        keras_hub_family(Llama(n_layer=1, sliding_window=8))
    with pytest.raises(ConfigError, match="no keras-hub family expresses this Llama: .*no output or MLP biases"):
        keras_hub_family(Llama(n_layer=1, mlp_bias=True))
    assert keras_hub_family(Llama(n_layer=1, qkv_bias=True)).name == "Qwen"
    with pytest.raises(ConfigError, match="MoE has no keras-hub counterpart"):
        keras_hub_family(MoE(n_layer=1))


def test_tokenizers_become_byte_level_bpe_or_are_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary, merges = byte_level_bpe(ByteTokenizer())
    assert len(vocabulary) == 258 and vocabulary["<|endoftext|>"] == 256 and vocabulary["Ġ"] == ord(" ")
    fast = bpe_tokenizer(tmp_path / "bpe")
    vocabulary, merges = byte_level_bpe(HFTokenizer(tmp_path / "bpe"))
    assert vocabulary == fast.get_vocab() and len(merges) == len(fast.get_vocab()) - 257
    words = Tokenizer(models.WordLevel({"a": 0, "<|endoftext|>": 1}, unk_token="a"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<|endoftext|>").save_pretrained(str(tmp_path / "words"))
    with pytest.raises(ConfigError, match="a WordLevel tokenizer has no keras-hub byte-level BPE counterpart"):
        byte_level_bpe(HFTokenizer(tmp_path / "words"))
