"""The end of a LoRA fine-tune: where the time goes between the last step and `RUN/hf`.

    python benchmarks/export_tail.py                 # SmolLM2-135M's shape: 30 layers, width 576, vocab 49,152
    python benchmarks/export_tail.py --layers 15 30  # one row per depth: is the tail linear in the model's size?

For each `--layers`, a random-weights Llama checkpoint of SmolLM2-135M's shape (width 576, 9 heads,
3 key/value heads, intermediate 1536, vocabulary 49,152, tied embeddings, rope theta 100000) and a
small byte-level BPE tokenizer are saved with `transformers` into a temporary folder (nothing is
downloaded); then `theseus run` of `llama/train/finetune` with `lora.enabled=true` trains `--steps`
steps on it, in a fresh process. That process times, around theseus's own functions (wrapped, not
changed): the training part (start to the end of `model.fit`, the last checkpoint included), and
the tail after it: the plot (`metrics.png`), the merge of the adapters (`lora.merge_lora`), the
HF export (`save_hf`, `RUN/hf`), the PEFT export (`lora.adapters` + `save_peft`, `RUN/peft`), the
whole tail (end of `fit` to `RUN/hf` and `RUN/peft` written), and the exit (until the process is gone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
start = time.perf_counter()
from theseus.base import backend
backend.select("jax")
import keras
from theseus.cli import main
from theseus.training import export, folder, lora, trainer

marks, spent = {}, {}

def timed(owner, name, part):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[part] = spent.get(part, 0.0) + time.perf_counter() - begin
            marks[part] = time.perf_counter()
    setattr(owner, name, wrapper)

timed(keras.Model, "fit", "fit")
timed(folder, "plot_run", "plot")
timed(lora, "merge_lora", "merge")
timed(lora, "adapters", "peft")
timed(export, "save_hf", "hf")
timed(export, "save_peft", "peft")
timed(trainer, "export_hf", "export")
configure, run = json.loads(sys.argv[1])
assert main(configure) == 0 and main(run) == 0
spent["training"] = marks["fit"] - start
spent["tail"] = marks["export"] - marks["fit"]
print(json.dumps({"spent": spent, "done": time.time()}))
"""

PARTS = ("training", "plot", "merge", "hf", "peft", "tail", "exit")
TEXT = "the quick brown fox jumps over the lazy dog while a tokenizer for benchmarks is trained offline"


def save_checkpoint(folder: Path, layers: int, width: int, vocab: int) -> int:
    """A random SmolLM2-135M-shaped Llama (`layers` deep) and a tiny BPE tokenizer in `folder`; its parameters."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=width * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([TEXT] * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def measure(root: Path, args: argparse.Namespace, layers: int) -> dict[str, float]:
    base = root / f"base-{layers}"
    parameters = save_checkpoint(base, layers, args.width, args.vocab)
    text = root / "text.txt"
    words = TEXT.split()
    text.write_text("\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(80)) for i in range(400)))
    config = str(root / f"ft-{layers}.yaml")
    configure = ["configure", "llama/train/finetune", config, f"architecture.huggingface.model={base}"]
    configure += [f"data.source={text}", "finetune.data=text", "lora.enabled=true", f"lora.rank={args.rank}"]
    run = ["run", f"run-{layers}", config, str(root / "runs")]
    run += [f"training.tokens={args.steps * args.batch * args.context}", f"training.batch_size={args.batch}"]
    run += [f"architecture.block_size={args.context}", "logging.validation_batches=1", "logging.progress_bar=false"]
    run += [f"logging.checkpoint_interval={args.steps}", "logging.peak_flops=1e12", "logging.plot=true"]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([configure, run])], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ended = time.time()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    spent = result["spent"]
    spent["exit"] = ended - result["done"]
    spent["parameters"] = parameters
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[30], help="depths to measure, one row each")
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--context", type=int, default=32)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-tail-") as root:
        for layers in args.layers:
            rows.append((layers, measure(Path(root), args, layers)))
    print(
        f"LoRA fine-tune (rank {args.rank}, attn + mlp) of a random Llama, width {args.width}, "
        f"vocab {args.vocab:,}, {args.steps} steps of {args.batch} x {args.context} tokens; seconds"
    )
    print("| layers | parameters | " + " | ".join(PARTS) + " |")
    print("|---" * (len(PARTS) + 2) + "|")
    for layers, spent in rows:
        cells = " | ".join(f"{spent.get(part, 0.0):.2f}" for part in PARTS)
        print(f"| {layers} | {spent['parameters'] / 1e6:.1f}M | {cells} |")


if __name__ == "__main__":
    main()
