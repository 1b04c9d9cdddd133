"""How long the command line takes before it does any work, side by side in one run.

    python benchmarks/cli_time.py [--rounds 5] [--before OLD_CHECKOUT]

Runs `theseus --help`, `theseus jobs` and `theseus configure` (with the job catalog,
`theseus.cli.catalog`, warm, and cold: an empty `THESEUS_CACHE`, so the catalog is first built
from the job classes) and a bare `import keras`, each in a fresh process, one after another in
rounds so that machine load hits all alike, and prints the median and the minimum wall time of
each. The theseus commands run from this checkout's `theseus` (`python -m theseus.cli` in its
root), whatever is installed. With `--before DIR`, a checkout of an earlier commit (e.g.
`git worktree add /tmp/before HEAD~1`), each also runs from DIR's `theseus` in the same rounds,
and the table gains its times and the ratio after / before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLD = ", cold catalog"


def commands(out: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "theseus.cli"]
    configure = [*cli, "configure", "gpt/train/pretrain", str(out), "--force"]
    return {
        "theseus --help": [*cli, "--help"],
        "theseus jobs": [*cli, "jobs"],
        f"theseus jobs{COLD}": [*cli, "jobs"],
        "theseus configure gpt/train/pretrain": configure,
        f"theseus configure gpt/train/pretrain{COLD}": configure,
        "python -c 'import keras'": [sys.executable, "-c", "import keras"],
    }


def timed(command: list[str], root: Path, cache: Path) -> float:
    """Seconds `command` takes in `root` with the catalog cache `cache`."""
    env = {**os.environ, "THESEUS_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run(command, cwd=root, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def measure(rounds: int, roots: dict[str, Path], tmp: Path) -> dict[tuple[str, str], list[float]]:
    """Each command's times from each checkout (`roots`: label -> root), in alternating rounds."""
    runs = commands(tmp / "config.yaml")
    warm = {label: tmp / f"cache-{label}" for label in roots}
    for label, root in roots.items():  # build each checkout's catalog once
        timed(runs["theseus jobs"], root, warm[label])
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, command in runs.items():
            for label, root in roots.items() if name.startswith("theseus") else [("", ROOT)]:
                cache = Path(tempfile.mkdtemp(dir=tmp)) if name.endswith(COLD) else warm.get(label, tmp)
                seconds.setdefault((name, label), []).append(timed(command, root, cache))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="an earlier checkout to time side by side")
    args = parser.parse_args()
    roots = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    with tempfile.TemporaryDirectory() as tmp:
        seconds = measure(args.rounds, roots, Path(tmp))
    n = args.rounds
    if args.before is None:
        print(f"| command | median of {n} | min |\n|---|---|---|")
    else:
        print(f"| command | before: median of {n} | min | after: median of {n} | min | after / before |")
        print("|---|---|---|---|---|---|")
    for name in commands(Path("config.yaml")):
        cells, medians = [], []
        for label in ("before", "after") if args.before else ("after",):
            times = seconds.get((name, label)) or seconds.get((name, ""), [])
            medians.append(statistics.median(times))
            cells += [f"{medians[-1]:.2f} s", f"{min(times):.2f} s"]
        ratio = [f"{medians[1] / medians[0]:.2f}" if name.startswith("theseus") else "-"] if args.before else []
        print(f"| `{name}` | " + " | ".join(cells + ratio) + " |")


if __name__ == "__main__":
    main()
