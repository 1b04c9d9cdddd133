"""Data pipeline speed, side by side in one process on the same machine.

    python benchmarks/data.py [--copies 20] [--steps 40] [--repeats 3] [--part all|tokenize|engines]

1. Tokenization: the `data/tokenize` engine (read a JSONL file, encode, write uint16
   shards; all cores, and in one process) against the tokenizer's own batch encode of
   the same documents already in memory (`tokenizer(texts)["input_ids"]` for a
   transformers tokenizer): tokens/s and the ratio. The text is the embedded corpus
   repeated `--copies` times; the BPE tokenizer (vocab 8192) is trained on it here.
2. Engines (`tokenize/engine`): the same job on the local engine and on Ray (a local Ray
   cluster of 4 CPUs started once, its start-up timed apart), with 1, 2 and 4 workers, the
   BPE tokenizer, the corpus as 8 JSONL files in a folder: tokens/s, and the overhead per
   shard of each engine: (time with many small shards - time with few) / (shards more).
3. Loading: batches/s the loader makes from memory-mapped shards (one source, and a
   70/30 mixture) against the optimizer steps/s of `model.fit` on the default job's model
   (GPT, 4 layers, width 128, context 256, batch 16), `fit` fed by the loader
   (prefetching) against `fit` fed batches already in memory, and the share of each fed
   step that `fit` spent waiting in the loader's `__getitem__` (the direct measure: on a
   loaded machine the two fit rates differ by noise alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from theseus.data import Source, TokenShards, embedded_corpus, load_tokenizer, tokenize_to_shards  # noqa: E402

# Keras and the model are imported in `loading` only: the tokenize job's worker processes
# import this script (as they import `theseus.cli` under `theseus run`), and should not pay for them.

BATCH, BLOCK = 16, 256
WARMUP = 5


def train_bpe(folder: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(str(folder))
    return folder


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def tokenization(root: Path, copies: int) -> tuple[list[tuple], Path]:
    documents = embedded_corpus() * copies
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for document in documents:
            f.write(json.dumps({"text": document}) + "\n")
    bpe = train_bpe(root / "bpe", embedded_corpus())
    rows = []
    for name in ("byte", str(bpe)):
        tokenizer = load_tokenizer(name)
        if name == "byte":
            own, seconds = timed(lambda: tokenizer.encode_batch(documents))
        else:
            from transformers import AutoTokenizer

            reference = AutoTokenizer.from_pretrained(name)
            own, seconds = timed(lambda: reference(documents, add_special_tokens=False)["input_ids"])
        tokens = sum(len(i) for i in own) + len(documents)  # + one end-of-document id each, as the job writes
        own_rate = tokens / seconds
        label = "byte" if name == "byte" else "BPE 8192"
        rows.append((label, "tokenizer's own batch encode (texts in memory)", own_rate, 1.0))
        for workers, how in (
            (os.cpu_count(), f"data/tokenize job, {os.cpu_count()} worker processes"),
            (1, "data/tokenize job, in one process"),
        ):
            out = root / f"shards-{label.replace(' ', '')}-{workers}"
            result, seconds = timed(
                lambda: tokenize_to_shards(Source(str(corpus)), tokenizer, out, workers=workers, progress=False)
            )
            written = result["train_tokens"] + result["validation_tokens"]
            assert written == tokens, (written, tokens)
            rows.append((label, how, written / seconds, written / seconds / own_rate))
    return rows, root / "shards-byte-1"


def engines(root: Path, copies: int) -> tuple[float, list[tuple]]:
    """Ray's start-up in seconds, and (engine, workers, shards, seconds, tokens/s) rows."""
    from theseus.data.engines import ray_session

    documents = embedded_corpus() * copies
    folder = root / "corpus-parts"
    folder.mkdir()
    for part in range(8):
        with open(folder / f"part-{part}.jsonl", "w") as f:
            for document in documents[part::8]:
                f.write(json.dumps({"text": document}) + "\n")
    bpe = root / "bpe" if (root / "bpe").is_dir() else train_bpe(root / "bpe", embedded_corpus())
    tokenizer, source = load_tokenizer(str(bpe)), Source(str(folder))
    total = sum(len(d) for d in documents) // 3  # about the tokens: a shard size giving ~2 or ~48 shards

    def run(engine: str, workers: int, shard_tokens: int) -> tuple:
        out = root / f"engine-{engine}-{workers}-{shard_tokens}"
        result, seconds = timed(
            lambda: tokenize_to_shards(
                source, tokenizer, out, shard_tokens=shard_tokens, workers=workers, engine=engine, progress=False
            )
        )
        tokens = result["train_tokens"] + result["validation_tokens"]
        return engine, workers, result["shards"], seconds, tokens / seconds

    plan = [(w, shard) for w in (1, 2, 4) for shard in ((total // 2, total // 48) if w == 2 else (total // 2,))]
    rows = [run("local", workers, shard_tokens) for workers, shard_tokens in plan]
    began = time.perf_counter()
    with ray_session(4):  # one local cluster for every Ray row; each job starts its own actors
        startup = time.perf_counter() - began
        rows += [run("ray", workers, shard_tokens) for workers, shard_tokens in plan]
    return startup, rows


def print_engines(startup: float, rows: list[tuple], copies: int) -> None:
    print(f"\nEngines ({copies} x the embedded corpus in 8 JSONL files, BPE 8192)")
    print(f"Ray start-up (a local cluster of 4 CPUs, once, not in the rows): {startup:.1f} s")
    print("| engine | workers | shards | seconds | tokens/s |\n|---|---|---|---|---|")
    for engine, workers, shards, seconds, rate in rows:
        print(f"| {engine} | {workers} | {shards} | {seconds:.2f} | {rate:,.0f} |")
    for engine in ("local", "ray"):
        few, many = [r for r in rows if r[0] == engine and r[1] == 2]
        per_shard = (many[3] - few[3]) / max(many[2] - few[2], 1)
        print(f"{engine}: overhead per shard {per_shard * 1000:.1f} ms ({few[2]} vs {many[2]} shards, 2 workers)")


def fit_rate(dataset, steps: int) -> float:
    """Optimizer steps/s of the default job's model fed by `dataset`, after WARMUP steps."""
    import keras

    from theseus.model.models import GPT

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # the step is done
            if batch + 1 == WARMUP:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=320, block_size=BLOCK, n_layer=4, n_head=4, n_embd=128)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    clock = StepClock()
    model.fit(dataset, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    return (steps - WARMUP) / (clock.end - clock.start)


def loading(shards: Path, root: Path, steps: int, repeats: int) -> list[tuple]:
    import keras

    from theseus.data import TokenWindows

    class InMemory(keras.utils.PyDataset):
        """The same batch every step, already made: `fit` with no data work at all."""

        def __init__(self, batch):
            super().__init__()
            self.batch = batch

        def __len__(self):
            return steps

        def __getitem__(self, index):
            return self.batch

    code = root / "code.txt"
    code.write_text("".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(200_000)))
    other = root / "shards-code"
    tokenize_to_shards(Source(str(code)), load_tokenizer("byte"), other, workers=1, progress=False)
    one = TokenShards(shards).split("train")
    mixed = [one, TokenShards(other).split("train")]
    rows = []
    for label, loader in (
        ("loader, one source, memory-mapped", TokenWindows(one, BLOCK, BATCH, 2000, seed=0, prefetch=0)),
        (
            "loader, 70/30 mixture, memory-mapped",
            TokenWindows(mixed, BLOCK, BATCH, 2000, seed=0, weights=[0.7, 0.3], prefetch=0),
        ),
    ):
        _, seconds = timed(lambda: [loader[i] for i in range(len(loader))])
        rows.append((label, len(loader) / seconds))

    class Waited(TokenWindows):
        """The loader, timing how long `fit` waits in `__getitem__` (after WARMUP steps)."""

        waited = 0.0

        def __getitem__(self, index):
            start = time.perf_counter()
            batch = super().__getitem__(index)
            if index >= WARMUP:
                self.waited += time.perf_counter() - start
            return batch

    in_memory, fed, waits = [], [], []
    for _ in range(repeats):  # interleaved, so that a change in the machine's load hits both
        in_memory.append(fit_rate(InMemory(TokenWindows(one, BLOCK, BATCH, 1, seed=0)[0]), steps))
        loader = Waited(mixed, BLOCK, BATCH, steps, seed=0, weights=[0.7, 0.3])
        fed.append(fit_rate(loader, steps))
        waits.append(loader.waited / (steps - WARMUP) * fed[-1])  # share of a step spent waiting
    rows.append(("model.fit, batches already in memory", statistics.median(in_memory), in_memory))
    rows.append(("model.fit fed by the loader (mixture, prefetch 8)", statistics.median(fed), fed))
    rows.append(("share of each fed step spent waiting for its batch", statistics.median(waits), waits))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20, help="copies of the embedded corpus to tokenize")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per fit measurement")
    parser.add_argument("--repeats", type=int, default=3, help="fit measurements of each kind (median)")
    parser.add_argument(
        "--part", choices=["all", "tokenize", "engines"], default="all", help="tokenize: tables 1 and 3"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.part in ("all", "engines"):
            print_engines(*engines(root, args.copies), args.copies)
        if args.part in ("all", "tokenize"):
            report(root, args)


def report(root: Path, args: argparse.Namespace) -> None:
    """The tokenization and loading tables."""
    tokenize_rows, shards = tokenization(root, args.copies)
    print(f"\nTokenization ({args.copies} x the embedded corpus, {args.copies * 465:,}k characters, JSONL)")
    print("| tokenizer | how | tokens/s | vs own batch encode |\n|---|---|---|---|")
    for label, how, rate, ratio in tokenize_rows:
        print(f"| {label} | {how} | {rate:,.0f} | {ratio:.2f}x |")
    load_rows = loading(shards, root, args.steps, args.repeats)
    step_rate = load_rows[2][1]
    print(f"\nLoading (batch {BATCH} x {BLOCK + 1} tokens) vs training (GPT 4 x 128, default job)")
    print("| what | batches or steps /s (median, min-max) | vs the training step |\n|---|---|---|")
    for label, rate, *runs in load_rows[:-1]:
        spread = f" ({min(runs[0]):.2f}-{max(runs[0]):.2f})" if runs else ""
        print(f"| {label} | {rate:,.2f}{spread} | {rate / step_rate:.2f}x |")
    label, share, shares = load_rows[-1]
    print(f"\n{label}: {share:.4%} (runs: {', '.join(f'{s:.4%}' for s in shares)})")


if __name__ == "__main__":
    main()
