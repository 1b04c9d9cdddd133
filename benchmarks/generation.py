"""Generation speed with and without the key/value cache, batch 1 and batch 8.

    python benchmarks/generation.py [--repeats 5] [--prompt 32] [--new 64] [--d-model 256]

One random GPT (6 layers, width 256, vocabulary 8192, float32, JAX unless KERAS_BACKEND
says otherwise) continues random prompts greedily:
  (a) cache: `theseus.generation.Generator`: one prefill call, then one compiled
      `while_loop` step per token that runs the new token only;
  (b) cache + sampling: the same with temperature 0.8, top-k 50 and top-p 0.9;
  (c) no cache: each new token re-runs the whole sequence so far (padded to a multiple of
      32 so that few shapes compile), one compiled forward per token.
Generated tokens per second (new tokens x batch / wall time), from the fastest of
`--repeats` timed runs (the least disturbed by other work on the machine) after one untimed
run that compiles everything; (a)/(c) is the cache's speed-up.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from theseus.generation import Generator, compile_for_backend  # noqa: E402
from theseus.model.models import GPT  # noqa: E402

BUCKET = 32


def gpt(args) -> GPT:
    keras.utils.set_random_seed(0)
    model = GPT(
        vocab_size=args.vocab,
        block_size=args.prompt + args.new,
        n_layer=args.layers,
        n_head=args.d_model // 64,
        n_embd=args.d_model,
    )
    model.build((None, args.prompt + args.new))
    return model


def without_cache(model, forward, prompts: np.ndarray, new: int) -> np.ndarray:
    """Greedy decoding that runs the full sequence for every new token."""
    batch, length = prompts.shape
    tokens = np.zeros((batch, length + new), "int32")
    tokens[:, :length] = prompts
    for step in range(new):
        end = length + step
        width = min(-(-end // BUCKET) * BUCKET, tokens.shape[1])
        logits = ops.convert_to_numpy(forward(tokens[:, :width]))  # (B, width, V); causal: padding unseen
        tokens[:, end] = logits[:, end - 1].argmax(-1)
    return tokens[:, length:]


def timed(run, repeats: int) -> float:
    run()  # compiles every shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    model = gpt(args)
    generator = Generator(model)
    forward = compile_for_backend(model, lambda tokens: model(tokens))
    print(
        f"backend {keras.config.backend()}, GPT {model.count_params() / 1e6:.1f}M parameters, "
        f"prompt {args.prompt}, {args.new} new tokens, best of {args.repeats}"
    )
    print("| batch | cache (tok/s) | cache + top-k/top-p sampling (tok/s) | no cache (tok/s) | cache speed-up |")
    print("|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = np.random.default_rng(batch).integers(0, args.vocab, (batch, args.prompt)).astype("int32")
        greedy = lambda: generator(prompts, args.new)  # noqa: E731
        sampled = lambda: generator(prompts, args.new, temperature=0.8, top_k=50, top_p=0.9, seed=1)  # noqa: E731
        uncached = lambda: without_cache(model, forward, prompts, args.new)  # noqa: E731
        same = np.array_equal(np.asarray(greedy().tokens), uncached())
        rates = [batch * args.new / timed(run, args.repeats) for run in (greedy, sampled, uncached)]
        print(
            f"| {batch} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[2]:,.0f} | {rates[0] / rates[2]:.1f}x"
            + ("" if same else " (tokens differ!)")
            + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
