"""Memory of a GPT-2-small training step against the parameter + optimizer + activation estimate.

    python benchmarks/memory.py [--batch 4] [--seq 256]

A 124M-parameter GPT (12 layers, 12 heads, width 768, vocabulary 50304, float32) trained
for `--steps` steps with `model.fit` and theseus's AdamW, in a fresh process. Measured:
the process's peak resident memory above what it held before the model existed (the
runtime's own cost is not the step's), and XLA's own account of the compiled step's
buffers (arguments, outputs and temporaries, from `memory_analysis()` on the same step
as a `jax.jit` of the model's `stateless_call` and the optimizer's `stateless_apply`).
Estimated: weights, gradients and AdamW's two moments (16 bytes a parameter), and the
activations the backward pass keeps, counted layer by layer below.
"""

from __future__ import annotations

import argparse
import os
import resource

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from theseus.model.models import GPT  # noqa: E402
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
    """XLA's (argument + output + temporary bytes, temporary bytes) for one compiled training step."""
    loss_fn = model.loss
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    optimizer_state = [v.value for v in optimizer.variables]

    def step(trainable, optimizer_state, x, y):
        def loss_of(params):
            logits, _ = model.stateless_call(params, non_trainable, x, training=True)
            return loss_fn(y, logits)

        loss, grads = jax.value_and_grad(loss_of)(trainable)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return loss, trainable, optimizer_state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(trainable, optimizer_state, x, y).compile()
    stats = compiled.memory_analysis()
    total = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )
    return total, stats.temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
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
