"""`metrics.png`: how a run is going, at a glance.

Two panels sharing the x axis (training tokens): the training loss and the validation
loss, and the learning-rate schedule as it was applied. Drawn at the end of training and
by `theseus plot RUN_DIR` at any time, from the run's `metrics.jsonl`.
"""

from __future__ import annotations

import os
from pathlib import Path

from theseus.config import ConfigError
from theseus.training.callbacks import read_rows

PLOT_FILE = "metrics.png"


def plot_run(run_dir: str | os.PathLike) -> Path:
    """Draw `run_dir/metrics.png` from `run_dir/metrics.jsonl`; its path."""
    from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: it has no metrics.jsonl")
    rows = read_rows(metrics)

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(row["tokens"], row[key]) for row in rows if key in row]
        return [p[0] for p in points], [p[1] for p in points]

    figure = Figure(figsize=(8, 6), layout="constrained")
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    loss_axes.plot(*series("loss"), label="train loss")
    loss_axes.plot(*series("val_loss"), marker="o", label="validation loss")
    loss_axes.set_ylabel("loss (nats / token)")
    loss_axes.set_title(run_dir.name)
    loss_axes.grid(alpha=0.3)
    loss_axes.legend()
    lr_axes.plot(*series("lr"), color="tab:green")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("training tokens")
    lr_axes.grid(alpha=0.3)

    path = run_dir / PLOT_FILE
    tmp = path.with_name(f".{PLOT_FILE}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)  # a reader never sees half a PNG
    return path
