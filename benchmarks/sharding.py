"""Step time and per-device memory of each sharding strategy on 8 devices.

    python benchmarks/sharding.py [--steps 10] [--layers 4] [--d-model 256] [--seq 128] [--batch 16]

One random GPT (vocabulary 320, float32, AdamW) is built under each `Topology` the way a
theseus job builds it (abstract build -> layout map -> real build under the distribution)
on 8 devices: eight virtual CPU devices unless the machine has real ones. Per strategy:
the median time of `--steps` `train_on_batch` calls after one that compiles, tokens per
second, and the bytes one device holds of the parameters and of the optimizer's state
(its slots follow their variables; step counters and the like are counted as well).

Then the mixture of experts: a `MoE` with 8 experts of hidden width 2 * d-model, top-2 routed
(no capacity), under dp, ep (1x8) and fsdp+ep (2x4), against the dense model of the same active
parameters (one expert of width 4 * d-model, top-1: exactly a Llama) under dp and fsdp.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from theseus.base.mesh import Topology, check_placement  # noqa: E402
from theseus.model.models import GPT, MoE  # noqa: E402

STRATEGIES = [("dp", 1), ("tp", 4), ("tp", 2), ("fsdp", 1), ("fsdp+tp", 2)]  # (strategy, shard) on 8 devices
MOE_STRATEGIES = {"dense": [("dp", 1), ("fsdp", 1)], "moe": [("dp", 1), ("ep", 8), ("fsdp+ep", 4)]}


def per_device_bytes(variables) -> int:
    """The most bytes any one device holds of `variables`."""
    held: dict = {}
    for variable in variables:
        for shard in variable.value.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values())


def gpt(args) -> GPT:
    return GPT(vocab_size=320, block_size=args.seq, n_layer=args.layers, n_head=args.d_model // 64, n_embd=args.d_model)


def moe(args, dense: bool = False) -> MoE:
    """8 experts of width 2 * d, top 2; or (`dense`) one of width 4 * d: the same active parameters."""
    experts = {"n_experts": 1, "top_k": 1, "n_embd_expert": 4 * args.d_model} if dense else {}
    return MoE(
        vocab_size=320,
        block_size=args.seq,
        n_layer=args.layers,
        n_head=args.d_model // 64,
        n_embd=args.d_model,
        **({"n_experts": 8, "top_k": 2, "n_embd_expert": 2 * args.d_model} | experts),
    )


def measure(strategy: str, shard: int, args, make=gpt) -> dict:
    def build():
        model = make(args)
        model.build((None, args.seq))
        return model

    topology = Topology(strategy=strategy, shard=shard, devices=8)
    distribution = topology.distribution(build, batch_size=args.batch)
    with distribution.scope():
        keras.utils.set_random_seed(0)
        model = build()
        check_placement(model)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        model.optimizer.build(model.trainable_variables)
        tokens = np.random.default_rng(0).integers(0, 320, (args.batch, args.seq + 1)).astype("int32")
        x, y = tokens[:, :-1], tokens[:, 1:]
        model.train_on_batch(x, y)  # compiles
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            model.train_on_batch(x, y)  # returns the loss as a Python float: the step has finished
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    mesh = distribution.device_mesh.shape
    return {
        "strategy": strategy,
        "mesh": "x".join(map(str, mesh)) if len(mesh) == 2 else f"{mesh[0]}x1",
        "step_ms": step * 1e3,
        "tokens_per_sec": args.batch * args.seq / step,
        "params": per_device_bytes(model.weights),
        "optimizer": per_device_bytes(model.optimizer.variables),
        "whole": sum(int(np.prod(v.shape)) * 4 for v in model.weights),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    rows = [measure(strategy, shard, args) for strategy, shard in STRATEGIES]
    report(rows, f"GPT {args.layers} layers, width {args.d_model}, seq {args.seq}, batch {args.batch}")
    for name, strategies in MOE_STRATEGIES.items():
        rows = [measure(s, shard, args, lambda a: moe(a, dense=name == "dense")) for s, shard in strategies]
        report(rows, f"{name}: MoE 8 experts top-2" if name == "moe" else "dense: MoE 1 expert top-1 (a Llama)")


def report(rows: list[dict], title: str) -> None:
    mib = 1 / 2**20
    print(
        f"{title}: {rows[0]['whole'] * mib:.2f} MiB of parameters; "
        f"{keras.distribution.list_devices()[0].split(':')[0]} x8"
    )
    print(
        f"{'strategy':<10} {'mesh':<6} {'step ms':>9} {'tokens/s':>9} {'params MiB/dev':>15} {'optimizer MiB/dev':>18} {'total MiB/dev':>14}"
    )
    for r in rows:
        print(
            f"{r['strategy']:<10} {r['mesh']:<6} {r['step_ms']:>9.1f} {r['tokens_per_sec']:>9.0f} "
            f"{r['params'] * mib:>15.2f} {r['optimizer'] * mib:>18.2f} {(r['params'] + r['optimizer']) * mib:>14.2f}"
        )


if __name__ == "__main__":
    main()
