"""Training throughput, side by side in one process on the same machine.

    python benchmarks/throughput.py [--repeats 3] [--steps 30] [--d-model 256]

For one GPT configuration (6 layers, sequence 256, batch 16, vocabulary 8192, float32):
  (a) theseus: `GPT` + theseus's AdamW/WSD, trained with `model.fit`;
  (b) the floor: the same model's `stateless_call` in a hand-written `jax.jit` step with
      optax AdamW (same betas, decay, global-norm clip) — no framework;
  (c) keras-hub's `GPT2CausalLM` of the same size, built from a config, trained with `fit`.
Steady-state tokens/s (compile and the first steps excluded), the median of `--repeats`
runs, the ratios (a)/(b) and (a)/(c), and model FLOPs utilisation against a peak measured
in the same run by a large float32 matmul in JAX.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from theseus.model.models import GPT  # noqa: E402
from theseus.training.optimizers import build_optimizer  # noqa: E402
from theseus.training.schedules import Constant  # noqa: E402

WARMUP_STEPS = 5  # compile + first steps, excluded from every timing


def batches(steps: int, batch: int, seq: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (steps, batch, seq + 1)).astype("int32")
    return tokens[..., :-1], tokens[..., 1:]


class StepTimer(keras.callbacks.Callback):
    """Wall time of each batch after the first `WARMUP_STEPS` (waits for the result)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # block until the step is done
        if batch >= WARMUP_STEPS:
            self.times.append(time.perf_counter() - self._start)


def gpt(args) -> GPT:
    keras.utils.set_random_seed(0)
    model = GPT(
        vocab_size=args.vocab, block_size=args.seq, n_layer=args.layers, n_head=args.d_model // 64,
        n_embd=args.d_model, tie_embeddings=True,
    )
    model.build((None, args.seq))
    return model


def run_theseus(args, x, y) -> float:
    model = gpt(args)
    optimizer = build_optimizer("adamw", learning_rate=Constant(3e-4))
    model.compile(optimizer=optimizer, jit_compile=True)
    timer = StepTimer()
    steps = len(x)
    model.fit(
        x.reshape(-1, args.seq), y.reshape(-1, args.seq), batch_size=args.batch,
        epochs=1, shuffle=False, verbose=0, callbacks=[timer], steps_per_epoch=steps,
    )
    return statistics.median(timer.times)


def run_jax(args, x, y) -> float:
    model = gpt(args)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1),
    )
    opt_state = tx.init(trainable)

    def loss_of(params, xb, yb):
        logits, _ = model.stateless_call(params, non_trainable, xb)
        return loss_fn(yb, logits)

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_of)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    times = []
    for i in range(len(x)):
        start = time.perf_counter()
        trainable, opt_state, loss = step(trainable, opt_state, x[i], y[i])
        loss.block_until_ready()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_keras_hub(args, x, y) -> float:
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=args.vocab, num_layers=args.layers, num_heads=args.d_model // 64,
        hidden_dim=args.d_model, intermediate_dim=4 * args.d_model, dropout=0.0, max_sequence_length=args.seq,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(optimizer=build_optimizer("adamw", learning_rate=Constant(3e-4)), jit_compile=True)
    flat_x = x.reshape(-1, args.seq)
    inputs = {"token_ids": flat_x, "padding_mask": np.ones_like(flat_x, dtype=bool)}
    timer = StepTimer()
    model.fit(
        inputs, y.reshape(-1, args.seq), batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
        callbacks=[timer], steps_per_epoch=len(x),
    )
    return statistics.median(timer.times)


def peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Float32 matmul FLOP/s of this machine under JAX (the MFU denominator)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def model_flops_per_token(args, n_params: int) -> float:
    """6·N for the weights plus 12·L·T·d for attention scores and values (PaLM appendix B)."""
    return 6 * n_params + 12 * args.layers * args.seq * args.d_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()

    x, y = batches(args.steps, args.batch, args.seq, args.vocab)
    setups = {"(a) theseus fit": run_theseus, "(b) jax.jit + optax": run_jax, "(c) keras-hub GPT2CausalLM fit": run_keras_hub}
    step_times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every setup alike
        for name, run in setups.items():
            step_times[name].append(run(args, x, y))
    peak = peak_flops()
    n_params = gpt(args).count_params()
    tokens_per_step = args.batch * args.seq
    flops_per_token = model_flops_per_token(args, n_params)

    print(f"\nGPT {args.layers} layers, d_model {args.d_model}, seq {args.seq}, batch {args.batch}, "
          f"vocab {args.vocab}: {n_params / 1e6:.2f}M parameters, float32, backend {keras.backend.backend()}")
    print(f"measured peak (float32 matmul): {peak / 1e9:.1f} GFLOP/s; median of {args.repeats} runs, "
          f"{args.steps - WARMUP_STEPS} timed steps each\n")
    print(f"| setup | step (ms) | tokens/s | MFU |\n|---|---|---|---|")
    tps = {}
    for name, times in step_times.items():
        step = statistics.median(times)
        tps[name] = tokens_per_step / step
        print(f"| {name} | {step * 1e3:.0f} | {tps[name]:,.0f} | {tps[name] * flops_per_token / peak:.1%} |")
    a, b, c = tps.values()
    print(f"\n(a)/(b) = {a / b:.3f}   (a)/(c) = {a / c:.3f}")


if __name__ == "__main__":
    main()
