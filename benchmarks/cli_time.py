"""How long the command line takes before it does any work, side by side in one run.

    python benchmarks/cli_time.py [--rounds 5]

Runs `theseus --help`, `theseus jobs`, `theseus configure` and a bare `import keras` each
in a fresh process, one after another in rounds so that machine load hits all alike, and
prints the median and the minimum wall time of each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(out: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "theseus.cli"]
    return {
        "theseus --help": [*cli, "--help"],
        "theseus jobs": [*cli, "jobs"],
        "theseus configure gpt/train/pretrain": [*cli, "configure", "gpt/train/pretrain", str(out), "--force"],
        "python -c 'import keras'": [sys.executable, "-c", "import keras"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = commands(Path(tmp) / "config.yaml")
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, command in runs.items():
                start = time.perf_counter()
                subprocess.run(command, capture_output=True, check=True)
                seconds[name].append(time.perf_counter() - start)
    print(f"| command | median of {args.rounds} | min |\n|---|---|---|")
    for name, times in seconds.items():
        print(f"| `{name}` | {statistics.median(times):.2f} s | {min(times):.2f} s |")


if __name__ == "__main__":
    main()
