"""The same training job on JAX, TensorFlow and PyTorch, side by side in one run.

    python benchmarks/backends.py [--tokens 163840] [--repeats 2] [--no-compile]

Runs the default job (`gpt/train/pretrain`: GPT, 4 layers, width 128, context 256, batch 16,
byte vocabulary, the embedded corpus) through `python -m theseus.recipes` on each backend
and each `training/jit_compile` setting, in a fresh process each time (Keras picks its
backend once per process), one setting after another in rounds so that machine load hits
all alike. Reads back what the job itself logs: `tokens_per_sec` in `metrics.jsonl` (the
mean over the last 10 steps, the compiling first step excluded), the median over its rows;
and the wall time of the whole command (start-up and compilation included).
The first row is the job exactly as the README runs it (no backend named: `topology.backend:
auto`); the last, the same model written the nanoGPT way in plain PyTorch (eager,
`benchmarks/native.py`), the fastest way a newcomer trains it here, timed per step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [  # (backend, training/jit_compile, what Keras does with it)
    ("auto", "auto", "as the README runs it (topology.backend: auto)"),
    ("jax", "auto", "jax.jit (XLA)"),
    ("tensorflow", "auto", "tf.function + XLA"),
    ("tensorflow", "false", "tf.function, no XLA"),
    ("torch", "auto", "eager"),
    ("torch", "true", "torch.compile"),
]


NATIVE = "PyTorch eager (nanoGPT)"  # the plain-PyTorch row of throughput.py's --floors
RAN: dict[str, str] = {}  # backend setting -> the backend the job said it trained on


def run_job(backend: str, jit: str, tokens: int, out: Path) -> tuple[float, float]:
    """(median logged tokens/s, wall seconds) of one run of the default job."""
    name = f"{backend}-{jit}"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # as a user's shell has it
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
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{backend} jit_compile={jit} failed:\n{result.stderr[-3000:]}")
    ran = re.search(r"\) on (\w+),", result.stdout)
    if ran is None or backend not in (ran[1], "auto"):
        raise RuntimeError(f"the job did not report running on {backend}:\n{result.stdout[-2000:]}")
    RAN[backend] = ran[1]
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r), wall


def run_nanogpt(tokens: int) -> tuple[float, float]:
    """(tokens/s, wall seconds) of the default job's model written the nanoGPT way in plain PyTorch
    (`native.py`), trained on as many random batches, in a fresh process."""
    size = ["--layers=4", "--d-model=128", "--heads=4", "--seq=256", "--batch=16", "--vocab=320"]
    command = [sys.executable, str(Path(__file__).parent / "throughput.py"), "--worker", NATIVE, *size]
    start = time.perf_counter()
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([*command, f"--steps={tokens // 4096}"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{NATIVE} failed:\n{result.stderr[-3000:]}")
    return 4096 / json.loads(result.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=163_840, help="tokens per run (4,096 a step)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row (minutes)")
    args = parser.parse_args()
    settings = [s for s in SETTINGS if not (args.no_compile and s[1] == "true")] + [("torch", "-", NATIVE)]
    measured: dict[tuple, list[tuple[float, float]]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for setting in settings:
                run = run_nanogpt(args.tokens) if setting[2] == NATIVE else None
                measured[setting].append(run or run_job(setting[0], setting[1], args.tokens, Path(folder)))
    rate_of = {setting: statistics.median(r for r, _ in runs) for setting, runs in measured.items()}
    jax_rate, native_rate = rate_of[("jax", "auto", "jax.jit (XLA)")], rate_of[settings[-1]]
    print(
        f"\ndefault job, {args.tokens // 4096} steps of 4,096 tokens, median of {args.repeats} runs "
        f"({os.cpu_count()} CPU cores); auto ran on {RAN.get('auto')}\n"
    )
    print("| backend | training/jit_compile | what runs | tokens/s | vs JAX | vs nanoGPT | whole job (s) |")
    print("|---|---|---|---|---|---|---|")
    for (backend, jit, what), runs in measured.items():
        rate, wall = rate_of[(backend, jit, what)], statistics.median(w for _, w in runs)
        print(
            f"| {backend} | {jit} | {what} | {rate:,.0f} | {rate / jax_rate:.2f} | {rate / native_rate:.2f} | {wall:.0f} |"
        )


if __name__ == "__main__":
    main()
