"""`theseus generate`: one prompt streams its continuation as it is generated, several are
generated as a batch, and `--chat` renders the prompt with the tokenizer's chat template."""

import io
import os
import subprocess
import sys

import pytest
from hf_checkpoints import VOCAB, hf_model, tokenizer

from theseus.config import ConfigError
from theseus.data import ByteTokenizer
from theseus.data.tokenizers import HFTokenizer
from theseus.experiments.completions import RULE, chat_prompt, print_completions
from theseus.experiments.sources import load

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random Llama folder whose head scores 0 for every token that is EOS or not
    whole characters, and sharply for the rest: its greedy text is printable and runs to
    max_new_tokens. Its tokenizer has a chat template."""
    import torch

    folder = tmp_path_factory.mktemp("llama")
    bpe = tokenizer(folder, chat_template=TEMPLATE)
    model = hf_model("llama", seed=3, max_position_embeddings=2048)
    unprintable = [
        i
        for i in range(VOCAB)
        if i >= len(bpe) or i == bpe.eos_token_id or not bpe.decode([i]) or "\ufffd" in bpe.decode([i])
    ]
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        model.lm_head.weight[unprintable] = 0.0
    model.save_pretrained(str(folder))
    return str(folder)


class Writes:
    """A text stream that keeps each write apart."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        if text:
            self.writes.append(text)

    def flush(self):
        pass


def test_one_prompt_streams_the_text_a_batch_generates(folder):
    """`stream` yields the text `generate` returns (greedy, and sampled with a seed), in pieces,
    and `print_completions` writes the prompt, then each piece as it comes, then the rule."""
    lm = load(folder)
    for settings in ({}, dict(temperature=0.8, top_k=40, seed=1)):
        pieces = list(lm.stream("the quick", 48, **settings))
        assert "".join(pieces) == lm.generate(["the quick"], 48, **settings)[0]
        assert len(pieces) > 10
    out = Writes()
    print_completions(folder, ["the quick"], 48, out=out)
    expected = lm.generate(["the quick"], 48)[0]
    assert len(expected) > 48  # printable tokens all the way
    assert "".join(out.writes) == f"the quick{expected}\n{RULE}\n"
    assert len(out.writes) > 10  # the prompt, then the continuation piece by piece


def test_chat_feeds_the_chat_templates_rendering(folder):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "hi there"}]
    reference = AutoTokenizer.from_pretrained(folder)
    rendered = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|user|>hi there\n<|assistant|>"
    lm = load(folder)
    assert chat_prompt(lm.tokenizer, "hi there") == rendered
    ids = reference.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert lm.encode(rendered) == list(ids)  # the tokens the model is fed
    out = io.StringIO()
    print_completions(folder, ["hi there"], 12, chat=True, out=out)
    assert out.getvalue() == f"{rendered}{lm.generate([rendered], 12)[0]}\n{RULE}\n"


def test_chat_without_a_template_is_one_clear_error(tmp_path):
    tokenizer(tmp_path)
    for plain in (HFTokenizer(tmp_path), ByteTokenizer()):
        with pytest.raises(ConfigError, match="--chat: the tokenizer .* has no chat template"):
            chat_prompt(plain, "hi")


@pytest.mark.slow
def test_the_command_line_prints_tokens_as_they_are_generated(folder, tmp_path):
    """The generated text reaches a reader in many reads, as it is generated (printed at the
    end, it would arrive in one), and it is the text the batch path prints."""
    prompt, n = "the quick", 600
    command = [sys.executable, "-m", "theseus.cli", "generate", folder, "--prompt", prompt, "--max-new-tokens", str(n)]
    with open(tmp_path / "stderr", "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, "XLA_FLAGS": ""})
        reads = []
        while chunk := os.read(process.stdout.fileno(), 1 << 16):
            reads.append(chunk)
        process.wait(timeout=600)
    assert process.returncode == 0, (tmp_path / "stderr").read_text()[-2000:]
    expected = load(folder).generate([prompt], n)[0]
    assert b"".join(reads).decode() == f"{prompt}{expected}\n{RULE}\n"
    assert len(reads) > 20, [len(chunk) for chunk in reads]
