"""Cooldown branches of a WSD run, and a token-budget sweep from one run.

A WSD run's stable phase can be cooled down from any of its checkpoints: the branch
continues the same data stream from the checkpoint's step S and decays the learning rate
over L more steps, so it *is* the WSD run the parent would have been with
`total = S + L` and `decay = L` (Hägele et al. 2024; MiniCPM). A branch is therefore an
ordinary run folder (config, checkpoints, metrics, resume after a kill) that starts from
a copy of the parent's checkpoint, plus `branch.json` naming its parent and branch point.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from theseus.config import ConfigError, resolve, write_atomic
from theseus.experiments import runs
from theseus.training import checkpoint as ckpt
from theseus.training.schedules import DECAY_SHAPES, WSD

BRANCH_FILE = "branch.json"
_TOKEN_UNITS = {"t": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_point(text: str, tokens_per_step: int) -> int:
    """A branch point as a step: a bare integer is a step; a number with a unit
    (`819200t`, `2M`, `1.5k`) is a token count, which must fall on a step."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([tTkKmMgGbB]?)\s*", str(text))
    if not match:
        raise ConfigError(f"--from {text!r}: give a step (200) or tokens with a unit (819200t, 2M)")
    number, unit = match.groups()
    if not unit:
        if not number.isdigit():
            raise ConfigError(f"--from {text!r}: a step is a whole number; tokens need a unit (t, k, M, G)")
        return int(number)
    tokens = float(number) * _TOKEN_UNITS[unit.lower()]
    if tokens % tokens_per_step:
        raise ConfigError(
            f"--from {text!r}: {tokens:.0f} tokens is not a whole number of steps of {tokens_per_step} tokens"
        )
    return int(tokens // tokens_per_step)


class Parent:
    """A finished or running WSD run folder that branches start from."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        config = self.run_dir / runs.CONFIG_FILE
        if not config.is_file():
            raise ConfigError(f"{self.run_dir} is not a run folder (no {runs.CONFIG_FILE})")
        self.key, self.fields, self.values = runs.read_config(config)
        self.job = runs.job_class(self.key)(self.values)
        schedule = self.job.build_schedule()
        if not isinstance(schedule, WSD):
            raise ConfigError(
                f"{self.run_dir} trains with {type(schedule).__name__}, not WSD: only a stable phase can be cooled down"
            )
        self.schedule = schedule
        self.tokens_per_step = self.job.tokens_per_step
        self.stable = range(schedule.warmup_steps, schedule.total_steps - schedule.decay_steps + 1)

    def points(self) -> list[int]:
        """Steps of the parent's complete checkpoints inside its stable phase."""
        return [c.step for c in ckpt.complete(self.run_dir / "checkpoints") if c.step in self.stable and c.step > 0]

    def checkpoint(self, step: int) -> ckpt.Checkpoint:
        points = self.points()
        if step not in points:
            if step >= self.stable.stop:
                why = f"step {step} is inside the decay phase (from step {self.stable.stop - 1} on)"
            elif step < self.stable.start:
                why = f"step {step} is inside the warmup (until step {self.stable.start})"
            else:
                why = f"there is no checkpoint at step {step}"
            available = ", ".join(map(str, points)) or "none (logging/keep_every keeps some, keep_checkpoints: 0 all)"
            raise ConfigError(f"cannot branch from {self.run_dir}: {why}; stable-phase checkpoints: {available}")
        found = ckpt.Checkpoint(ckpt.step_dir(self.run_dir / "checkpoints", step), step)
        try:
            ckpt.verify(found.path)
        except ckpt.CheckpointError as error:
            raise ConfigError(f"cannot branch: {error}") from None
        return found

    def val_loss_at(self, step: int) -> float | None:
        """The parent's validation loss logged at `step`, if it validated there."""
        rows = _rows(self.run_dir / "metrics.jsonl")
        return next((r["val_loss"] for r in rows if r["step"] == step and "val_loss" in r), None)


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cooldown(
    run_dir: str | os.PathLike,
    point: str | int,
    *,
    fraction: float = 0.2,
    shape: str = "1-sqrt",
    steps: int | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Branch a cooldown from `run_dir`'s checkpoint at `point` and train it (resuming it
    if the branch folder exists). Returns the branch's result with its folder and length."""
    parent = Parent(run_dir)
    start = point if isinstance(point, int) else parse_point(point, parent.tokens_per_step)
    source = parent.checkpoint(start)
    if shape not in DECAY_SHAPES:
        raise ConfigError(f"--shape {shape!r}: must be one of {list(DECAY_SHAPES)}")
    derived = steps is None
    if derived:
        if not 0 < fraction <= 1:
            raise ConfigError(f"--fraction {fraction}: must be in (0, 1]")
        steps = max(1, round(fraction * start))  # a fraction of the parent's tokens so far
    if steps < 1:
        raise ConfigError(f"--steps {steps}: a cooldown needs at least one step")
    branch = {
        "parent": str(parent.run_dir.resolve()),
        "step": start,
        "tokens": start * parent.tokens_per_step,
        "decay_steps": steps,
        "shape": shape,
        "fraction": fraction if derived else None,
    }
    values = dict(parent.values)
    values.update(
        {
            "training/tokens": (start + steps) * parent.tokens_per_step,
            "optimization/warmup": parent.schedule.warmup_steps,
            "optimization/decay": steps,
            "optimization/decay_shape": shape,
        }
    )
    values = resolve(parent.fields, values, {k.replace(".", "/"): v for k, v in (overrides or {}).items()})
    branch_dir = parent.run_dir.parent / (name or branch_name(parent.run_dir.name, start, steps, shape))
    with _locked_branch(branch_dir, parent, source, branch, values):  # one writer per branch folder
        runs.prepare_run_dir(branch_dir, parent.key, parent.fields, values)
        print(
            f"cooldown of {parent.run_dir} from step {start} over {steps} steps ({shape}) in {branch_dir}", flush=True
        )
        result = runs.job_class(parent.key)(values, branch_dir).run() or {}
    return {**result, **branch, "run_dir": str(branch_dir)}


def branch_name(parent: str, step: int, decay_steps: int, shape: str) -> str:
    """A branch's default folder name: what makes it distinct, e.g. `RUN-cooldown-40-d10-linear` (from step
    40, decayed over 10 steps, linearly), so a sweep's branches and hand-made ones live side by side."""
    return f"{parent}-cooldown-{step}-d{decay_steps}-{shape}"


def _locked_branch(branch_dir: Path, parent: Parent, source: ckpt.Checkpoint, branch: dict, values: dict):
    """The branch folder with its lock held (`runs.RunLock`): laid out if new, else checked to be
    this branch. A process already writing it is named and nothing is changed."""
    if not branch_dir.exists():
        lock = _create_branch(branch_dir, parent, source, branch, values)
        if lock is not None:
            return lock
    lock = runs.RunLock(branch_dir).acquire()
    recorded = json.loads((branch_dir / BRANCH_FILE).read_text()) if (branch_dir / BRANCH_FILE).is_file() else {}
    if _identity(recorded) != _identity(branch):
        lock.release()
        raise ConfigError(f"{branch_dir} exists and is not this branch ({BRANCH_FILE} differs): pick another --name")
    return lock


def _identity(branch: dict) -> dict:
    """What makes two branches the same run: not how the decay length was asked for (`--steps 10`, or a
    fraction that gives 10 steps)."""
    return {k: v for k, v in branch.items() if k != "fraction"}


def _create_branch(
    branch_dir: Path, parent: Parent, source: ckpt.Checkpoint, branch: dict, values: dict
) -> runs.RunLock | None:
    """Lay out the branch folder in a locked temporary place, then rename it (and its held lock)
    into being; None when another process created the branch first."""
    tmp = branch_dir.with_name(f".{branch_dir.name}.tmp")
    lock = runs.RunLock(tmp).acquire()  # a process laying out the same branch is refused
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for stale in tmp.iterdir():  # left by an attempt that died here
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.name != runs.LOCK_FILE:
                stale.unlink()
        (tmp / "checkpoints").mkdir()
        shutil.copytree(source.path, tmp / "checkpoints" / source.path.name)
        rows = [r for r in _rows(parent.run_dir / "metrics.jsonl") if r["step"] <= source.step]
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / runs.CONFIG_FILE).write_text(runs.config_text(parent.key, parent.fields, values))
        (tmp / BRANCH_FILE).write_text(json.dumps(branch, indent=1, sort_keys=True))
        os.replace(tmp, branch_dir)  # fails when another process made the branch first
    except OSError:
        if branch_dir.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
        if branch_dir.exists():
            return None
        raise
    lock.moved(branch_dir)
    return lock


def sweep(
    run_dir: str | os.PathLike,
    every: int = 1,
    *,
    fraction: float = 0.2,
    shape: str = "1-sqrt",
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Cool down from every `every`-th stable checkpoint of `run_dir`; write `sweep.csv`,
    `sweep.md` and `sweep.png` (final validation loss against tokens) into it."""
    if every < 1:
        raise ConfigError(f"--every {every}: must be >= 1")
    parent = Parent(run_dir)
    points = parent.points()[every - 1 :: every]
    if not points:
        raise ConfigError(f"{parent.run_dir} has no stable-phase checkpoints to branch from")
    rows = []
    for start in points:
        result = cooldown(run_dir, start, fraction=fraction, shape=shape, overrides=overrides)
        rows.append(
            {
                "branch_step": start,
                "branch_tokens": start * parent.tokens_per_step,
                "decay_steps": result["decay_steps"],
                "tokens": (start + result["decay_steps"]) * parent.tokens_per_step,
                "parent_val_loss": parent.val_loss_at(start),
                "val_loss": result.get("val_loss", _last_val_loss(Path(result["run_dir"]))),
                "run_dir": result["run_dir"],
            }
        )
    write_sweep(parent.run_dir, rows)
    return rows


def _last_val_loss(run_dir: Path) -> float | None:
    losses = [r["val_loss"] for r in _rows(run_dir / "metrics.jsonl") if "val_loss" in r]
    return losses[-1] if losses else None


def write_sweep(run_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    columns = ["branch_step", "branch_tokens", "decay_steps", "tokens", "parent_val_loss", "val_loss", "run_dir"]
    with open(run_dir / ".sweep.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(run_dir / ".sweep.csv.tmp", run_dir / "sweep.csv")
    table = [
        "| branch at step | tokens at end | decay steps | parent val loss | cooled val loss |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        parent_loss = f"{r['parent_val_loss']:.4f}" if r["parent_val_loss"] is not None else "-"
        table.append(
            f"| {r['branch_step']} | {r['tokens']:,} | {r['decay_steps']} | {parent_loss} | {r['val_loss']:.4f} |"
        )
    write_atomic(run_dir / "sweep.md", "\n".join(table) + "\n")
    _plot(run_dir, rows)


def _plot(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parent = [r for r in _rows(run_dir / "metrics.jsonl") if "val_loss" in r and r["step"] > 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    if parent:
        ax.plot([r["tokens"] for r in parent], [r["val_loss"] for r in parent], color="0.6", label="parent run")
    ax.plot([r["tokens"] for r in rows], [r["val_loss"] for r in rows], "o-", label="cooldown branches")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss")
    ax.set_title(f"WSD cooldowns of {run_dir.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / ".sweep.png.tmp.png")
    plt.close(fig)
    os.replace(run_dir / ".sweep.png.tmp.png", run_dir / "sweep.png")
