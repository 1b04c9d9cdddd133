"""Training speed of a 124M-parameter GPT on one accelerator: tokens/s and MFU.

    python benchmarks/gpu.py [--steps 60] [--batch 32] [--config recipes/gpt/gpu-124m.yaml]

Runs `gpt/train/pretrain` with `recipes/gpt/gpu-124m.yaml` (bfloat16, context 1024, flash
attention where the device has it) for `--steps` steps through `python -m theseus.recipes`,
and reads back what the job logs (`tokens_per_sec`, `mfu` in `metrics.jsonl`), with MFU
against the device's rated dense bfloat16 peak where the device is in `RATED_PEAK`, else
against the bfloat16 matmul the trainer times at start. `--tiny` shrinks the model so that
the script itself can be checked on a CPU.
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

RATED_PEAK = {  # dense bfloat16 FLOP/s from the vendors' data sheets, by device name substring
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "TPU v5 lite": 197e12,
    "TPU v4": 275e12,
}
TINY = [
    "--architecture.n_layer=2",
    "--architecture.n_embd=64",
    "--architecture.n_head=2",
    "--architecture.block_size=128",
    "--architecture.vocab_size=320",
]


def device() -> tuple[str, float]:
    """The first device's name and its rated peak (0.0 when unknown)."""
    import jax

    name = getattr(jax.devices()[0], "device_kind", str(jax.devices()[0]))
    return name, next((peak for key, peak in RATED_PEAK.items() if key in name), 0.0)


def flash_attention_used(block_size: int, heads: int, head_dim: int) -> bool:
    """Whether Keras's `dot_product_attention` picks the cuDNN flash kernel for this shape."""
    import keras
    from keras.src.backend.jax.nn import _can_use_flash_attention

    q = keras.ops.zeros((1, block_size, heads, head_dim), "bfloat16")
    return bool(_can_use_flash_attention(q, q, q, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "recipes/gpt/gpu-124m.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, to check the script on a CPU")
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
            f"--logging.peak_flops={peak}",
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
    parameters = next(line for line in result.stdout.splitlines() if line.startswith("training "))
    print(
        f"device: {name}; peak {'rated' if peak else 'measured (bfloat16 matmul)'}"
        f"{f' {peak / 1e12:.0f} TFLOP/s' if peak else ''}"
    )
    print(f"flash attention: {'yes' if flash_attention_used(block_size, heads, head_dim) else 'no'}")
    print(parameters)
    print(f"\n| metrics rows | tokens/s | MFU |\n|---|---|---|\n| {len(rows)} | {rate:,.0f} | {mfu:.1%} |")


if __name__ == "__main__":
    main()
