"""Training throughput, side by side in one process on the same machine.

    python benchmarks/throughput.py [--model gpt|llama|moe] [--repeats 3] [--steps 15] [--d-model 256]
    python benchmarks/throughput.py --floors [--layers 4 --d-model 128 --heads 4 --vocab 320]

For one GPT (or Llama) configuration (6 layers, sequence 256, batch 16, vocabulary 8192):
  (a) theseus: the model + theseus's AdamW (tracking gradient/update norms) + the trainer's
      per-step callbacks, trained with `model.fit`, as `*/train/pretrain` runs it;
  (b) the floor: the same model's `stateless_call` in a hand-written `jax.jit` step with
      optax AdamW (same betas, decay, global-norm clip) and optax's cross-entropy;
  (c) keras-hub's `GPT2CausalLM` / `LlamaCausalLM` of the same size, built from a config
      (no preset download), trained with `fit`;
  (d) the same keras-hub backbone as a theseus model (`KerasHubLM`, as `keras_hub/train/pretrain`
      builds it), trained as (a) is: theseus's optimizer, loss and per-step callbacks; (d)/(c) is
      what theseus's trainer costs a keras-hub model against plain `fit`;
  before/after rows for theseus's optimisations (the same (a) with Keras's masked sparse
  cross-entropy, 3-D projections and `ops.dot_product_attention`, as theseus had them
  before), and (a) in bfloat16.
Steady-state tokens/s (compile and the first steps excluded), the median of `--repeats`
interleaved rounds, the ratios (a)/(b) and (a)/(c), and model FLOPs utilisation against a
peak measured in the same run by a large matmul in JAX (float32, and bfloat16 for bf16 rows).

`--floors`: theseus against the native step on each backend, every row in a fresh process of its
backend (Keras picks one per process), the rows in turn in each round: theseus `fit` on JAX against
(b); on torch, eagerly and under `torch.compile`, against the same GPT written the nanoGPT way
(`native.py`: eager, and `torch.compile`); on TensorFlow with XLA against a `tf.function(jit_compile=True)`
step. `--rows` picks some of them (`FLOORS`); `--heads` sets the head count (default: width 64 each).

`--model moe`: (a) only, for a `MoE` with 8 experts of hidden width 2·d, top-2 routed, without a
capacity (every expert on every token) and with capacity factor 1.25 (dispatch/combine), against
the dense model of the same active parameters (one expert of width 4·d, top-1: exactly a Llama).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import native  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from theseus.base.targets import IGNORE_INDEX  # noqa: E402
from theseus.model.keras_hub import KerasHubLM  # noqa: E402
from theseus.model.layers import attention, dense  # noqa: E402
from theseus.model.models import GPT, Llama, MoE, causal_lm  # noqa: E402
from theseus.training import flops  # noqa: E402
from theseus.training.callbacks import LearningRate, MetricsLogger, StopOnNonFinite, Throughput  # noqa: E402
from theseus.training.norms import track_norms  # noqa: E402
from theseus.training.optimizers import build_optimizer  # noqa: E402
from theseus.training.schedules import WSD  # noqa: E402

WARMUP_STEPS = 5  # compile + first steps, excluded from every timing
SIZE_ARGS = ("steps", "layers", "d_model", "seq", "batch", "vocab", "heads")
MOE_VARIANTS = {  # `--model moe`: name -> MoE arguments, as multiples of d_model for the widths
    "dense (same active parameters)": {"n_experts": 1, "top_k": 1, "n_embd_expert": 4},
    "MoE 8 experts top-2, no capacity": {"n_experts": 8, "top_k": 2, "n_embd_expert": 2},
    "MoE 8 experts top-2, capacity 1.25": {"n_experts": 8, "top_k": 2, "n_embd_expert": 2, "capacity_factor": 1.25},
}


def batches(steps: int, batch: int, seq: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (steps, batch, seq + 1)).astype("int32")
    return tokens[..., :-1], tokens[..., 1:]


class StepTimer(keras.callbacks.Callback):
    """Wall time of each batch after the first `WARMUP_STEPS` (waits for the result); put
    last, so the other callbacks' batch-end work is inside the time."""

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


def mlp_width(args) -> int:
    """GPT's 4·d, or Llama's 8/3·d rounded up to a multiple of 64 (what `Llama` defaults to)."""
    return 4 * args.d_model if args.model == "gpt" else -(-8 * args.d_model // 3 // 64) * 64


def build_model(args, precision: str = "float32", variant: str | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    heads = n_heads(args)
    if args.model == "moe":
        experts = dict(MOE_VARIANTS[variant or next(iter(MOE_VARIANTS))])
        experts["n_embd_expert"] *= args.d_model
        model = MoE(
            vocab_size=args.vocab,
            block_size=args.seq,
            n_layer=args.layers,
            n_head=heads,
            n_kv_head=max(heads // 2, 1),
            n_embd=args.d_model,
            **experts,
        )
    elif args.model == "gpt":
        model = GPT(
            vocab_size=args.vocab,
            block_size=args.seq,
            n_layer=args.layers,
            n_head=heads,
            n_embd=args.d_model,
            tie_embeddings=True,
        )
    else:
        model = Llama(
            vocab_size=args.vocab,
            block_size=args.seq,
            n_layer=args.layers,
            n_head=heads,
            n_kv_head=max(heads // 2, 1),
            n_embd=args.d_model,
            n_embd_ff=mlp_width(args),
        )
    model.build((None, args.seq))
    keras.config.set_dtype_policy("float32")
    return model


def n_heads(args) -> int:
    """`--heads`, else heads of width 64."""
    return args.heads or args.d_model // 64


def hub_backbone(args) -> tuple[str, dict]:
    """The keras-hub backbone class and arguments of the size `build_model` builds (rows (c) and (d))."""
    heads = n_heads(args)
    common = dict(vocabulary_size=args.vocab, num_layers=args.layers, hidden_dim=args.d_model)
    if args.model == "gpt":
        return "GPT2Backbone", dict(
            common, num_heads=heads, intermediate_dim=mlp_width(args), dropout=0.0, max_sequence_length=args.seq
        )
    return "LlamaBackbone", dict(
        common, num_query_heads=heads, intermediate_dim=mlp_width(args), num_key_value_heads=max(heads // 2, 1)
    )


def build_hub_model(args, precision: str = "float32", variant: str | None = None) -> keras.Model:
    """(d): the keras-hub backbone as theseus's `KerasHubLM`."""
    keras.utils.set_random_seed(0)
    name, config = hub_backbone(args)
    return KerasHubLM(backbone_name=name, backbone_config=json.dumps(config))


@contextlib.contextmanager
def before_optimisations():
    """theseus as it was before this benchmark's optimisations, for the before/after rows:
    projections as 3-D `ops.matmul`, attention always through `ops.dot_product_attention`,
    and Keras's masked sparse cross-entropy as the loss."""
    patches = [(module, "matmul", keras.ops.matmul) for module in (dense, causal_lm)]
    patches.append((attention, "fused_attention_available", lambda: True))
    saved = [getattr(module, name) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_INDEX)
    finally:
        for (module, name, _), original in zip(patches, saved):
            setattr(module, name, original)


def run_theseus(
    args,
    x,
    y,
    precision: str = "float32",
    before: bool = False,
    variant: str | None = None,
    build=build_model,
    jit_compile: bool | str = True,
) -> float:
    model = build(args, precision, variant)
    steps, tokens_per_step = len(x), args.batch * args.seq
    schedule = WSD(3e-4, steps)
    timer = StepTimer()
    with before_optimisations() if before else contextlib.nullcontext("auto") as loss:
        model.compile(
            optimizer=track_norms(build_optimizer("adamw", learning_rate=schedule)), loss=loss, jit_compile=jit_compile
        )
        callbacks = [  # the trainer's per-step callbacks (validation and checkpoints are not per step)
            StopOnNonFinite(0),
            Throughput(tokens_per_step, 10),
            LearningRate(schedule, 0, steps),
            MetricsLogger(os.path.join(tempfile.mkdtemp(), "metrics.jsonl"), 10, tokens_per_step, 0, steps),
            timer,
        ]
        model.fit(
            x.reshape(-1, args.seq),
            y.reshape(-1, args.seq),
            batch_size=args.batch,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
    return statistics.median(timer.times)


def run_jax(args, x, y) -> float:
    model = build_model(args)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1),
    )
    opt_state = tx.init(trainable)

    def loss_of(params, xb, yb):
        logits, _ = model.stateless_call(params, non_trainable, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

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
    name, config = hub_backbone(args)
    backbone = getattr(keras_hub.models, name)(**config)
    task = keras_hub.models.GPT2CausalLM if args.model == "gpt" else keras_hub.models.LlamaCausalLM
    model = task(backbone=backbone, preprocessor=None)
    model.compile(optimizer=build_optimizer("adamw", learning_rate=WSD(3e-4, len(x))), jit_compile=True)
    flat_x = x.reshape(-1, args.seq)
    inputs = {"token_ids": flat_x, "padding_mask": np.ones_like(flat_x, dtype=bool)}
    timer = StepTimer()
    model.fit(
        inputs, y.reshape(-1, args.seq), batch_size=args.batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer]
    )
    return statistics.median(timer.times)


def peak_flops(dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul in `dtype` under JAX, the best of `repeats` (the MFU denominator)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt", "llama", "moe"], default="gpt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: width 64 each)")
    parser.add_argument("--floors", action="store_true", help="theseus on each backend against its native step")
    parser.add_argument("--rows", default=None, help="--floors: comma-separated row names (default: all)")
    parser.add_argument("--worker", choices=list(FLOORS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return print(json.dumps(run_floor_row(args, args.worker)))
    if args.floors:
        return compare_floors(args)
    if args.model == "moe":
        return compare_moe(args)

    hub_name = "GPT2CausalLM" if args.model == "gpt" else "LlamaCausalLM"
    setups = {  # name: (precision, run)
        "(a) theseus fit": ("float32", run_theseus),
        "(b) jax.jit + optax": ("float32", run_jax),
        f"(c) keras-hub {hub_name} fit": ("float32", run_keras_hub),
        f"(d) theseus fit, keras-hub {hub_name.replace('CausalLM', 'Backbone')}": (
            "float32",
            lambda *a: run_theseus(*a, build=build_hub_model),
        ),
        "(a) before: 3-D projections, fused attention, Keras loss": (
            "float32",
            lambda *a: run_theseus(*a, before=True),
        ),
        "(a) theseus fit, mixed_bfloat16": ("bfloat16", lambda *a: run_theseus(*a, precision="bfloat16")),
    }
    x, y = batches(args.steps, args.batch, args.seq, args.vocab)
    step_times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every setup alike
        for name, (_, run) in setups.items():
            step_times[name].append(run(args, x, y))
    peaks = {"float32": peak_flops(jnp.float32), "bfloat16": peak_flops(jnp.bfloat16)}
    model = build_model(args)
    flops_per_token = flops.flops_per_token(model, {}, args.seq)
    tokens_per_step = args.batch * args.seq

    print(
        f"\n{type(model).__name__} {args.layers} layers, d_model {args.d_model}, seq {args.seq}, "
        f"batch {args.batch}, vocab {args.vocab}: {model.count_params() / 1e6:.2f}M parameters, "
        f"backend {keras.backend.backend()}"
    )
    print(
        f"measured peak (2048^2 matmul): float32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bfloat16 "
        f"{peaks['bfloat16'] / 1e9:.0f} GFLOP/s; median of {args.repeats} rounds, "
        f"{args.steps - WARMUP_STEPS} timed steps each\n"
    )
    print("| setup | compute | step (ms) | tokens/s | MFU |\n|---|---|---|---|---|")
    tps = {}
    for name, times in step_times.items():
        precision = setups[name][0]
        step = statistics.median(times)
        tps[name] = tokens_per_step / step
        runs = ", ".join(f"{t * 1e3:.0f}" for t in times)
        print(
            f"| {name} | {precision} | {step * 1e3:.0f} ({runs}) | {tps[name]:,.0f} | "
            f"{tps[name] * flops_per_token / peaks[precision]:.1%} |"
        )
    a, b, c, d, before, _ = tps.values()
    print(f"\n(a)/(b) = {a / b:.3f}   (a)/(c) = {a / c:.3f}   (d)/(c) = {d / c:.3f}   after/before = {a / before:.3f}")


FLOORS = {  # `--floors` rows: name -> (Keras backend, the native row it is measured against, or None for a floor)
    "theseus fit (jax)": ("jax", "jax.jit + optax"),
    "jax.jit + optax": ("jax", None),
    "theseus fit (torch eager)": ("torch", "PyTorch eager (nanoGPT)"),
    "PyTorch eager (nanoGPT)": ("torch", None),
    "theseus fit (torch.compile)": ("torch", "torch.compile (nanoGPT)"),
    "torch.compile (nanoGPT)": ("torch", None),
    "theseus fit (tensorflow XLA)": ("tensorflow", "tf.function(jit_compile=True)"),
    "tf.function(jit_compile=True)": ("tensorflow", None),
}


def run_floor_row(args, name: str) -> float:
    """One `FLOORS` row's median step time, in this process (whose Keras backend is the row's)."""
    x, y = batches(args.steps, args.batch, args.seq, args.vocab)
    size = dict(layers=args.layers, width=args.d_model, heads=n_heads(args), vocab=args.vocab, warmup=WARMUP_STEPS)
    if name.startswith("theseus"):
        return run_theseus(args, x, y, jit_compile="compile" in name or keras.backend.backend() != "torch")
    if name == "jax.jit + optax":
        return run_jax(args, x, y)
    if name.startswith("tf.function"):
        return statistics.median(native.tensorflow_step_times(x, y, **size))
    return statistics.median(native.torch_step_times(x, y, **size, compile="compile" in name))


def compare_floors(args) -> None:
    """Every `FLOORS` row in a fresh process of its backend, the rows in turn in each round."""
    rows = args.rows.split(",") if args.rows else list(FLOORS)
    size = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in SIZE_ARGS and v is not None]
    step_times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name in rows:
            env = dict(os.environ, KERAS_BACKEND=FLOORS[name][0])
            command = [sys.executable, __file__, "--worker", name, *size]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            step_times[name].append(json.loads(out.strip().splitlines()[-1]))
    args.model = "gpt"
    flops_per_token = flops.flops_per_token(build_model(args), {}, args.seq)
    peak, tokens_per_step = peak_flops(jnp.float32), args.batch * args.seq
    print(
        f"\nGPT {args.layers} layers, d_model {args.d_model}, {n_heads(args)} heads, seq {args.seq}, batch "
        f"{args.batch}, vocab {args.vocab}, float32; median of {args.repeats} rounds, each row in a fresh process\n"
    )
    print("| backend | setup | step (ms) | tokens/s | MFU | vs its floor |\n|---|---|---|---|---|---|")
    tps = {name: tokens_per_step / statistics.median(times) for name, times in step_times.items()}
    for name, times in step_times.items():
        backend, floor = FLOORS[name]
        ratio = f"{tps[name] / tps[floor]:.2f}" if floor in tps else ""
        runs = ", ".join(f"{t * 1e3:.0f}" for t in times)
        print(
            f"| {backend} | {name} | {statistics.median(times) * 1e3:.0f} ({runs}) | {tps[name]:,.0f} | "
            f"{tps[name] * flops_per_token / peak:.1%} | {ratio} |"
        )


def compare_moe(args) -> None:
    """(a) for each of `MOE_VARIANTS`, interleaved; tokens/s and the ratio to the dense model."""
    x, y = batches(args.steps, args.batch, args.seq, args.vocab)
    step_times: dict[str, list[float]] = {name: [] for name in MOE_VARIANTS}
    for _ in range(args.repeats):
        for name in MOE_VARIANTS:
            step_times[name].append(run_theseus(args, x, y, variant=name))
    print(
        f"\nMoE {args.layers} layers, d_model {args.d_model}, seq {args.seq}, batch {args.batch}, "
        f"vocab {args.vocab}, backend {keras.backend.backend()}; median of {args.repeats} rounds\n"
    )
    print("| model | parameters | step (ms) | tokens/s | vs dense |\n|---|---|---|---|---|")
    dense = None
    for name, times in step_times.items():
        step = statistics.median(times)
        tokens_per_sec = args.batch * args.seq / step
        dense = dense or tokens_per_sec
        params = build_model(args, variant=name).count_params() / 1e6
        print(f"| {name} | {params:.2f}M | {step * 1e3:.0f} | {tokens_per_sec:,.0f} | {tokens_per_sec / dense:.2f} |")


if __name__ == "__main__":
    main()
