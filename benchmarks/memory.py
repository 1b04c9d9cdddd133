"""Memory of a GPT-2-small training step against the parameter + optimizer + activation estimate.

    python benchmarks/memory.py [--batch 4] [--seq 256]
    python benchmarks/memory.py --model qwen2.5-0.5b [--batch 4] [--seq 1024] [--real-batch 1 --real-seq 256]
    python benchmarks/memory.py --model qwen2.5-0.5b --real-batch 1 --real-seq 1024 --real-backend torch

A 124M-parameter GPT (12 layers, 12 heads, width 768, vocabulary 50304, float32) trained
for `--steps` steps with `model.fit` and theseus's AdamW, in a fresh process. Measured:
the process's peak resident memory above what it held before the model existed (the
runtime's own cost is not the step's), and XLA's own account of the compiled step's
buffers (arguments, outputs and temporaries, from `memory_analysis()` on the same step
as a `jax.jit` of the model's `stateless_call` and the optimizer's `stateless_apply`).
Estimated: weights, gradients and AdamW's two moments (16 bytes a parameter), and the
activations the backward pass keeps, counted layer by layer below.

`--model qwen2.5-0.5b`: a Qwen2.5-0.5B-shaped model (random weights; vocabulary 151,936, width
896, 24 layers, 14 heads, 2 key/value heads, MLP 4864, tied embeddings), its training step with
full logits (`loss_chunk=0`) and with the chunked loss (`loss_chunk=auto`), dense and with LoRA
(rank 8 on every attention and MLP projection): XLA's bytes of the compiled step at `--batch` x
`--seq` (compiled only: the step is not run), and, with `--real-batch`, each variant's peak
resident memory and step time over real steps at that size, each in a fresh process;
`--real-backend torch` runs those real steps on PyTorch (and only them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from theseus.model.chunked_loss import chunk_size, chunked_loss  # noqa: E402
from theseus.model.models import GPT, Llama  # noqa: E402
from theseus.training.lora import enable_lora  # noqa: E402
from theseus.training.optimizers import build_optimizer  # noqa: E402

MB = 2**20


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def activation_estimate(batch: int, seq: int, width: int, heads: int, layers: int, vocab: int) -> dict[str, float]:
    """Bytes the backward pass keeps (float32), by where they come from.

    Per block and token: the block input, the two LayerNorm outputs, q, k, v, the attention
    output, the residual after attention (8 x width); the MLP's hidden before and after GELU
    (2 x 4 x width); per head, the attention probabilities (and the scores the softmax's
    gradient is computed from), seq each. The head keeps the final LayerNorm output and the
    logits, whose gradient (softmax minus one-hot) is another vocabulary-sized array.
    """
    tokens = batch * seq
    blocks = layers * tokens * (8 * width + 8 * width + 2 * heads * seq) * 4
    head = tokens * (width + 2 * vocab) * 4
    return {"activations kept by the blocks": blocks, "logits and their gradient": head}


def measured_step_buffers(model: keras.Model, optimizer: keras.optimizers.Optimizer, x, y) -> tuple[float, float]:
    """XLA's (argument + output + temporary bytes, temporary bytes) for one compiled training step:
    Keras's own loss-and-gradient function (`compute_loss_and_updates`, which `fit` differentiates,
    chunked loss included) and the optimizer's update, compiled as `fit` compiles them."""
    optimizer.build(model.trainable_variables)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    metrics = [v.value for v in model.metrics_variables]
    optimizer_state = [v.value for v in optimizer.variables]

    def step(trainable, optimizer_state, x, y):
        arguments = dict(training=True, optimizer_variables=optimizer_state)
        gradient = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
        (loss, _), grads = gradient(trainable, non_trainable, metrics, x, y, None, **arguments)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return loss, trainable, optimizer_state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(trainable, optimizer_state, x, y).compile()
    stats = compiled.memory_analysis()
    total = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )
    return total, stats.temp_size_in_bytes


QWEN = dict(vocab_size=151_936, block_size=32_768, n_layer=24, n_head=14, n_kv_head=2, head_dim=64, n_embd=896)
QWEN.update(n_embd_ff=4864, rope_theta=1e6, qkv_bias=True, tie_embeddings=True)
"""Qwen2.5-0.5B's shape (its config.json) as theseus `Llama` arguments."""

LOSSES = {"full": 0, "chunked": "auto"}
VARIANTS = {f"{kind} {loss}": (kind == "lora", LOSSES[loss]) for kind in ("dense", "lora") for loss in LOSSES}


def qwen(lora: bool, chunk, seq: int) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """The Qwen2.5-0.5B-shaped model, compiled with AdamW and `loss_chunk=chunk` (LoRA: rank 8)."""
    keras.utils.set_random_seed(0)
    model = Llama(**QWEN)
    model.build((None, seq))
    if lora:
        enable_lora(model, 8, 16.0, ["attn", "mlp"])
    optimizer = build_optimizer("adamw", learning_rate=1e-5)
    model.compile(optimizer=optimizer, loss_chunk=chunk)
    return model, optimizer


def tokens_of(batch: int, seq: int, rows: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, QWEN["vocab_size"], (rows * batch, seq + 1)).astype("int32")


def compiled_step(variant: str, batch: int, seq: int) -> dict[str, float]:
    """XLA's bytes of `variant`'s compiled step (total, temporaries) and the chunk it uses."""
    model, optimizer = qwen(*VARIANTS[variant], seq)
    tokens = tokens_of(batch, seq, 1)
    total, temporaries = measured_step_buffers(model, optimizer, tokens[:, :-1], tokens[:, 1:])
    return {"total": total, "temporaries": temporaries, "loss_chunk": model.loss_chunk}


def real_steps(variant: str, batch: int, seq: int) -> dict[str, float]:
    """Peak resident memory above the runtime's own and seconds a step of `variant` (after compiling)."""
    keras.ops.convert_to_numpy(keras.ops.ones((8, 8)) @ keras.ops.ones((8, 8)))  # start the runtime
    before = current_rss()
    model, _ = qwen(*VARIANTS[variant], seq)
    tokens = tokens_of(batch, seq, 3)
    fit = dict(batch_size=batch, epochs=1, shuffle=False, verbose=0)
    model.fit(tokens[:batch, :-1], tokens[:batch, 1:], **fit)  # compiles
    start = time.perf_counter()
    model.fit(tokens[batch:, :-1], tokens[batch:, 1:], **fit)  # two steps
    return {
        "peak_rss": peak_rss() - before,
        "step_s": (time.perf_counter() - start) / 2,
        "loss_chunk": model.loss_chunk,
    }


def head_times(batch: int, seq: int, rounds: int = 3) -> dict[str, float]:
    """Seconds of the head + loss and their gradient alone (Qwen's tied head on random final hidden
    states), full against chunked, alternating `rounds` times in one process: the step-time cost of
    chunking, apart from the 24 layers that both variants share."""
    model, _ = qwen(False, 0, seq)
    weight, rng = model.head_weight.value, np.random.default_rng(0)
    hidden = jax.numpy.asarray(rng.standard_normal((batch, seq, QWEN["n_embd"]), dtype="float32"))
    targets = jax.numpy.asarray(rng.integers(0, QWEN["vocab_size"], (batch, seq)), dtype="int32")
    full = jax.jit(jax.value_and_grad(lambda h, w: model.loss(targets, model.head(h, w)), argnums=(0, 1)))
    chunk = chunk_size("auto", QWEN["vocab_size"])
    chunked = jax.jit(jax.value_and_grad(lambda h, w: chunked_loss(model.head, h, w, targets, None, chunk), (0, 1)))
    times: dict[str, list[float]] = {"full": [], "chunked": []}
    for function in (full, chunked):
        jax.block_until_ready(function(hidden, weight))  # compile
    for _ in range(rounds):
        for name, function in (("full", full), ("chunked", chunked)):
            start = time.perf_counter()
            jax.block_until_ready(function(hidden, weight))
            times[name].append(time.perf_counter() - start)
    return {name: min(found) for name, found in times.items()}


def in_fresh_process(what: str, variant: str, batch: int, seq: int, backend: str = "jax") -> dict[str, float]:
    """`compiled_step` or `real_steps` of `variant` in a fresh process of `backend` (its own peak memory)."""
    command = [sys.executable, __file__, f"--{what}", variant, "--batch", str(batch), "--seq", str(seq)]
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def qwen_report(args: argparse.Namespace) -> None:
    """The Qwen2.5-0.5B-shaped table: compiled-step bytes at batch x seq, real steps at the real size."""
    print(f"\nQwen2.5-0.5B shape (random weights), AdamW, float32, real steps on {args.real_backend}\n")
    if args.real_backend != "jax":  # XLA's bytes and the jitted head are JAX's own
        return real_steps_table(args)
    logits = args.batch * args.seq * QWEN["vocab_size"] * 4
    print(
        f"float32 logits at batch {args.batch} x {args.seq}: {logits / MB:,.0f} MB (and as much for their gradient)\n"
    )
    print("| step | loss_chunk | XLA total (MB) | XLA temporaries (MB) |\n|---|---|---|---|")
    for variant in VARIANTS:
        found = in_fresh_process("compiled-step", variant, args.batch, args.seq)
        print(f"| {variant} | {found['loss_chunk']} | {found['total'] / MB:,.0f} | {found['temporaries'] / MB:,.0f} |")
    times = head_times(args.real_batch or 1, args.real_seq)
    print(f"\nhead + loss + their gradient alone at {args.real_batch or 1} x {args.real_seq}, best of 3 alternating:")
    print(f"full {times['full']:.2f} s, chunked {times['chunked']:.2f} s ({times['chunked'] / times['full']:.2f}x)")
    if args.real_batch:
        real_steps_table(args)


def real_steps_table(args: argparse.Namespace) -> None:
    print(f"\nreal steps at batch {args.real_batch} x {args.real_seq} (each variant in a fresh process)\n")
    print("| step | loss_chunk | peak RSS above the runtime (MB) | seconds a step |\n|---|---|---|---|")
    for variant in VARIANTS:
        found = in_fresh_process("real-steps", variant, args.real_batch, args.real_seq, args.real_backend)
        row = f"| {variant} | {found['loss_chunk']} | {found['peak_rss'] / MB:,.0f} | {found['step_s']:.2f} |"
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt2", "qwen2.5-0.5b"], default="gpt2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=None, help="default: 256 (gpt2), 1024 (qwen2.5-0.5b)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--real-batch", type=int, default=0, help="qwen2.5-0.5b: real steps at this batch (0: none)")
    parser.add_argument("--real-seq", type=int, default=256)
    parser.add_argument("--real-backend", choices=["jax", "torch"], default="jax", help="torch: the real steps only")
    parser.add_argument("--compiled-step", default=None, help=argparse.SUPPRESS)  # the qwen report's subprocesses
    parser.add_argument("--real-steps", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for what, function in (("compiled_step", compiled_step), ("real_steps", real_steps)):
        if getattr(args, what):
            print(json.dumps(function(getattr(args, what), args.batch, args.seq)))
            return
    if args.model == "qwen2.5-0.5b":
        return qwen_report(argparse.Namespace(**{**vars(args), "seq": args.seq or 1024}))
    args.seq = args.seq or 256
    width, heads, layers, vocab = 768, 12, 12, 50304

    keras.ops.convert_to_numpy(keras.ops.ones((8, 8)) @ keras.ops.ones((8, 8)))  # start the runtime
    before = current_rss()
    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=vocab, block_size=1024, n_layer=layers, n_head=heads, n_embd=width)
    model.build((None, args.seq))
    optimizer = build_optimizer("adamw", learning_rate=1e-4)
    model.compile(optimizer=optimizer)
    tokens = np.random.default_rng(0).integers(0, vocab, (args.steps * args.batch, args.seq + 1)).astype("int32")
    model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
    measured_rss = peak_rss() - before
    xla_total, xla_temp = measured_step_buffers(model, optimizer, tokens[: args.batch, :-1], tokens[: args.batch, 1:])

    n = model.count_params()
    estimate = {
        "weights (float32)": 4 * n,
        "gradients": 4 * n,
        "AdamW moments (2 per weight)": 8 * n,
        **activation_estimate(args.batch, args.seq, width, heads, layers, vocab),
    }
    total = sum(estimate.values())
    print(
        f"\nGPT {layers} layers, width {width}, vocabulary {vocab}: {n / 1e6:.1f}M parameters; "
        f"batch {args.batch} x sequence {args.seq}, float32, backend {keras.backend.backend()}\n"
    )
    print("| part | estimate (MB) |\n|---|---|")
    for name, size in estimate.items():
        print(f"| {name} | {size / MB:,.0f} |")
    print(f"| **total** | **{total / MB:,.0f}** |\n")
    print("| measured | MB | / estimate |\n|---|---|---|")
    print(
        f"| XLA: the compiled step's buffers (arguments + outputs + temporaries) | {xla_total / MB:,.0f} | "
        f"{xla_total / total:.2f} |"
    )
    print(f"| XLA: of which temporaries (activations, gradients, workspace) | {xla_temp / MB:,.0f} | |")
    print(
        f"| process: peak resident memory above the runtime's own, `model.fit` | {measured_rss / MB:,.0f} | "
        f"{measured_rss / total:.2f} |"
    )


if __name__ == "__main__":
    main()
