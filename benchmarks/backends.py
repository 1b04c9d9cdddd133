"""The same training job on JAX, TensorFlow and PyTorch, side by side in one run.

    python benchmarks/backends.py [--tokens 163840] [--repeats 2]

Runs the default job (`gpt/train/pretrain`: GPT, 4 layers, width 128, context 256, batch 16,
byte vocabulary, the embedded corpus) through `python -m theseus.recipes` on each backend
and each `training/jit_compile` setting, in a fresh process each time (Keras picks its
backend once per process), one setting after another in rounds so that machine load hits
all alike. Reads back what the job itself logs: `tokens_per_sec` in `metrics.jsonl` (the
mean over the last 10 steps, the compiling first step excluded), the median over its rows;
and the wall time of the whole command (start-up and compilation included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [  # (backend, training/jit_compile, what Keras does with it)
    ("jax", "auto", "jax.jit (XLA)"),
    ("tensorflow", "auto", "tf.function + XLA"),
    ("tensorflow", "false", "tf.function, no XLA"),
    ("torch", "auto", "eager"),
    ("torch", "true", "torch.compile"),
]


def run_job(backend: str, jit: str, tokens: int, out: Path) -> tuple[float, float]:
    """(median logged tokens/s, wall seconds) of one run of the default job."""
    name = f"{backend}-{jit}"
    command = [
        sys.executable,
        "-m",
        "theseus.recipes",
        "gpt/train/pretrain",
        f"--topology.backend={backend}",
        f"--training.jit_compile={jit}",
        f"--training.tokens={tokens}",
        "--logging.validation_interval=100000",
        "--logging.progress_bar=false",
        "--logging.plot=false",
        "--fresh",
        "--out",
        str(out),
        "--name",
        name,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{backend} jit_compile={jit} failed:\n{result.stderr[-3000:]}")
    if f"on {backend}" not in result.stdout:
        raise RuntimeError(f"the job did not report running on {backend}:\n{result.stdout[-2000:]}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=163_840, help="tokens per run (4,096 a step)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    measured: dict[tuple, list[tuple[float, float]]] = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for setting in SETTINGS:
                measured[setting].append(run_job(setting[0], setting[1], args.tokens, Path(folder)))
    jax_rate = statistics.median(rate for rate, _ in measured[SETTINGS[0]])
    print(
        f"\ndefault job, {args.tokens // 4096} steps of 4,096 tokens, median of {args.repeats} runs "
        f"({os.cpu_count()} CPU cores)\n"
    )
    print("| backend | training/jit_compile | what runs | tokens/s | vs JAX | whole job (s) |")
    print("|---|---|---|---|---|---|")
    for (backend, jit, what), runs in measured.items():
        rate = statistics.median(r for r, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"| {backend} | {jit} | {what} | {rate:,.0f} | {rate / jax_rate:.2f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
