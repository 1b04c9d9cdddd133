"""Training speed of a 124M-parameter GPT on one accelerator: tokens/s and MFU.

    python benchmarks/gpu.py [--steps 60] [--batch 32] [--config recipes/gpt/gpu-124m.yaml] [--floors]

Runs `gpt/train/pretrain` with `recipes/gpt/gpu-124m.yaml` (bfloat16, context 1024, flash
attention where the device has it) for `--steps` steps through `python -m theseus.recipes`,
and reads back what the job logs (`tokens_per_sec`, `mfu` in `metrics.jsonl`), with MFU
against the device's rated dense bfloat16 peak where one is known (`theseus.base.devices`), and
beside it against the bfloat16 matmul the trainer times at start. `--tiny` shrinks the model so that
the script itself can be checked on a CPU. `--floors` then also runs `throughput.py --floors`
at the same size (float32: theseus on JAX, TensorFlow and PyTorch against each one's native step)
and prints its table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FLOORS_124M = "--layers=12 --d-model=768 --heads=12 --vocab=50304 --seq=1024"
TINY = [
    "--architecture.n_layer=2",
    "--architecture.n_embd=64",
    "--architecture.n_head=2",
    "--architecture.block_size=128",
    "--architecture.vocab_size=320",
]


def device() -> tuple[str, float]:
    """The first device's name and the rated bfloat16 peak the job's `mfu` is against (0.0: none known,
    `mfu` is then against a timed matmul); the table is `theseus.base.devices.RATED_PEAK`."""
    from theseus.base.devices import accelerator, rated_peak

    return accelerator() or "CPU", rated_peak("bfloat16")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "recipes/gpt/gpu-124m.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, to check the script on a CPU")
    parser.add_argument("--floors", action="store_true", help="also theseus against the native step per backend")
    args = parser.parse_args()

    name, peak = device()
    size = TINY if args.tiny else []
    block_size = 128 if args.tiny else 1024
    heads, head_dim = (2, 32) if args.tiny else (12, 64)
    tokens = args.steps * args.batch * block_size
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "theseus.recipes",
            "gpt/train/pretrain",
            "--config",
            args.config,
            *size,
            f"--training.batch_size={args.batch}",
            f"--training.tokens={tokens}",
            "--optimization.warmup=0.1",  # the recipe warms up for 700 steps; a short measurement needs less
            "--logging.validation_interval=1000000",
            "--logging.checkpoint_interval=1000000",
            "--logging.progress_bar=false",
            "--logging.plot=false",
            "--topology.devices=1",
            "--out",
            out,
            "--name",
            "run",
        ]
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            sys.exit(f"the job failed:\n{result.stderr[-4000:]}")
        rows = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_sec" in r][1:] or [r for r in rows if "tokens_per_sec" in r]
    rate = statistics.median(r["tokens_per_sec"] for r in rows)
    mfu = statistics.median(r["mfu"] for r in rows)
    timed = statistics.median(r.get("mfu_measured", r["mfu"]) for r in rows)
    parameters = next(line for line in result.stdout.splitlines() if line.startswith("training "))
    print(
        f"device: {name}; peak {'rated' if peak else 'measured (bfloat16 matmul)'}"
        f"{f' {peak / 1e12:.0f} TFLOP/s' if peak else ''}"
    )
    from theseus.training.flops import flash_attention_used

    print(f"flash attention: {'yes' if flash_attention_used(block_size, heads, head_dim) else 'no'}")
    print(parameters)
    print(
        f"\n| metrics rows | tokens/s | MFU (against the {'rated' if peak else 'timed'} peak) | MFU (timed bf16 matmul) |"
        f"\n|---|---|---|---|\n| {len(rows)} | {rate:,.0f} | {mfu:.1%} | {timed:.1%} |"
    )
    if args.floors:
        floors = "--layers=2 --d-model=64 --heads=2 --vocab=320 --seq=128" if args.tiny else FLOORS_124M
        command = [sys.executable, str(Path(__file__).parent / "throughput.py"), "--floors", *floors.split()]
        subprocess.run([*command, "--repeats=2", "--steps=20", f"--batch={args.batch // 4 or 1}"], check=True)


if __name__ == "__main__":
    main()
