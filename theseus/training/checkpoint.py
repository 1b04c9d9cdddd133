"""Checkpoints on disk: complete or absent, never half-written.

A checkpoint is a folder `checkpoints/step_00000100/` holding `model.weights.h5` (Keras's
own format, readable by every backend: the model's weights and its optimizer's variables),
`state.json` (step, tokens, validation loss, the RNG state that `save_weights` leaves out,
the loss tracker's running sums), a copy of the run's `config.yaml`, and `manifest.json`
(size and SHA-256 of every file). It is written into a temporary folder and renamed into
place, so a crash leaves either the whole checkpoint or none. A full disk is found before
the weights file is written (`check_room`), and a write that fails anyway removes its
temporary folder and raises: the checkpoints already there stay as they were. A loader
checks the manifest and skips a checkpoint that does not match it. `latest` and `best`
(lowest validation loss) are one-line pointer files beside the checkpoints.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

try:
    import resource
except ImportError:  # Windows: no file size limit to check
    resource = None

from theseus.base import multihost
from theseus.config import write_atomic
from theseus.training.accumulation import PerOptimizerStep
from theseus.training.schedules import WSD

log = logging.getLogger("theseus")

MODEL_FILE = "model.weights.h5"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
TEMPORARY_PREFIX = ".tmp_"
BROKEN_PREFIX = "broken_"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.path / STATE_FILE).read_text())


def digest(paths: list[Path]) -> str:
    """SHA-256 over the bytes of `paths`, in order (hex)."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def rng_variables(model: keras.Model) -> list[keras.Variable]:
    """The model's variables that `save_weights` does not store: its RNG (seed generator) states."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def _remove(path: Path) -> None:
    """Delete a folder by renaming it to a temporary name first, so no half-deleted
    checkpoint is ever visible under its final name."""
    doomed = path.with_name(f"{TEMPORARY_PREFIX}delete_{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def save(
    root: str | os.PathLike,
    model: keras.Model,
    state: dict[str, Any],
    keep: int = 3,
    files: Mapping[str, str] | None = None,
    save_weights: Callable[[Path], None] | None = None,
    keep_every: int = 0,
) -> Checkpoint:
    """Write a checkpoint of `model` (and its optimizer) at `state["step"]` under `root`.

    `files` are extra text files to include (e.g. `{"config.yaml": ...}`). Keeps the newest
    `keep` checkpoints (0 keeps all) plus the one with the lowest `val_loss` and those whose
    step is a multiple of `keep_every` (0: none), and updates the `latest` and `best` pointers.
    """
    root = Path(root)
    if not multihost.is_primary():  # multi-host: help gather the sharded state; process 0 writes it
        with multihost.gathered(multihost.model_state(model)):
            pass
        multihost.sync(f"checkpoint {state['step']}")
        return Checkpoint(step_dir(root, int(state["step"])), int(state["step"]))
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TEMPORARY_PREFIX}*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    step = int(state["step"])
    final = step_dir(root, step)
    tmp = root / f"{TEMPORARY_PREFIX}{final.name}_{os.getpid()}"
    if save_weights is None:
        check_room(root, weights_bytes(model))
    tmp.mkdir()
    try:
        with multihost.gathered(multihost.model_state(model)):  # whole arrays, even those split over hosts
            (save_weights or model.save_weights)(tmp / MODEL_FILE)  # the optimizer's variables too, once built
        state = {**state, "rng": [keras.ops.convert_to_numpy(v.value).tolist() for v in rng_variables(model)]}
        _write_files(tmp, {STATE_FILE: json.dumps(state, indent=1, sort_keys=True), **(files or {})})
    except BaseException:  # e.g. a full disk: the checkpoints already there stay as they were
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, final)
    _prune(root, keep, keep_every)
    multihost.sync(f"checkpoint {step}")
    return Checkpoint(final, step)


def weights_bytes(model: keras.Model) -> int:
    """About the size of `model.save_weights`'s file, a little over: the bytes of the model's
    and its optimizer's variables, plus HDF5's headers (a few KiB a variable, 1 MiB in all)."""
    optimizer = getattr(model, "optimizer", None)
    variables = [*model.weights, *(optimizer.variables if optimizer is not None else [])]
    data = sum(math.prod(v.shape) * _itemsize(v.dtype) for v in variables)
    return data + 4096 * len(variables) + (1 << 20)


def _itemsize(dtype: str) -> int:
    digits = re.search(r"\d+", str(dtype))  # float32, bfloat16, int8; bool has none
    return int(digits.group()) // 8 if digits else 1


def check_room(root: Path, size: int) -> None:
    """Raise OSError (ENOSPC, or EFBIG past the file size limit) when a file of `size` bytes
    cannot be written under `root`. Checked before the weights file is written, because HDF5
    does not survive a write that fails halfway: it retries as each of its objects is freed,
    printing a traceback each time, and can crash the process as it exits."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
    if limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)) and size > limit:
        raise OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)}: {size} bytes, the limit is {limit}", str(root))
    if size > shutil.disk_usage(root).free:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {size} bytes needed", str(root))


def _write_files(folder: Path, texts: Mapping[str, str]) -> None:
    """Write `texts` into `folder` with a manifest of every file there, all synced to disk."""
    for name, text in texts.items():
        (folder / name).write_text(text)
    names = sorted(p.name for p in folder.iterdir())
    manifest = {name: {"bytes": (folder / name).stat().st_size, "sha256": digest([folder / name])} for name in names}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for name in names + [MANIFEST_FILE]:  # durable before it becomes visible
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())


def publish(tmp: Path, final: Path) -> None:
    """Rename the complete checkpoint folder `tmp` to its final name and point `latest` at it."""
    if final.exists():  # the same step saved again (e.g. a signal right after a save)
        _remove(final)
    os.replace(tmp, final)
    write_atomic(final.parent / "latest", final.name + "\n")


def _val_loss(checkpoint: Checkpoint) -> float:
    try:
        value = checkpoint.state.get("val_loss")
    except (OSError, json.JSONDecodeError):
        return float("inf")
    return float("inf") if value is None else float(value)


def best(root: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint with the lowest validation loss (None if none has one)."""
    scored = [(_val_loss(c), c.step, c) for c in complete(root)]
    scored = [s for s in scored if s[0] != float("inf")]
    return min(scored, key=lambda s: s[:2])[2] if scored else None


def best_val_loss(root: str | os.PathLike) -> float:
    """The lowest validation loss among the checkpoints under `root` (inf if none has one)."""
    winner = best(root)
    return _val_loss(winner) if winner is not None else float("inf")


def _prune(root: Path, keep: int, keep_every: int = 0) -> None:
    winner = best(root)
    if winner is not None:
        write_atomic(root / "best", winner.path.name + "\n")
    if keep <= 0:
        return
    for old in complete(root)[:-keep]:
        if old != winner and not (keep_every and old.step % keep_every == 0):
            _remove(old.path)


STABLE_POINTS = 10
"""How many checkpoints `logging/keep_every: null` keeps through a WSD run's stable phase."""


def automatic_keep_every(schedule: Any, interval: int) -> int:
    """`logging/keep_every: null`: for a WSD schedule, the multiple of the checkpoint `interval`
    that keeps about `STABLE_POINTS` checkpoints evenly through its stable phase, the points
    a cooldown branches from; 0 (none) for any other schedule."""
    if isinstance(schedule, PerOptimizerStep):  # gradient accumulation's wrapper
        schedule = schedule.schedule
    if not isinstance(schedule, WSD):
        return 0
    stable = schedule.total_steps - schedule.warmup_steps - schedule.decay_steps
    return interval * max(1, math.ceil(stable / (STABLE_POINTS * interval)))


def verify(path: Path) -> None:
    """Raise CheckpointError unless every file in the manifest is present and intact."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST_FILE} (incomplete checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is corrupt") from None
    for name, entry in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file.stat().st_size != entry["bytes"] or digest([file]) != entry["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its manifest (corrupt or truncated)")


def complete(root: str | os.PathLike) -> list[Checkpoint]:
    """The checkpoints under `root` whose folder name is final, oldest first (not verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("step_*"):
        try:
            found.append(Checkpoint(path, int(path.name.split("_", 1)[1])))
        except ValueError:
            continue
    return sorted(found, key=lambda c: c.step)


def latest(root: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
    for checkpoint in reversed(complete(root)):
        try:
            verify(checkpoint.path)
            return checkpoint
        except CheckpointError as error:
            log.warning("skipping checkpoint: %s", error)
    return None


def set_aside_after(root: str | os.PathLike, step: int) -> list[Path]:
    """Rename checkpoints newer than `step` (ones `latest` skipped as broken) to `broken_step_...`.

    They are kept for inspection, but no longer count as checkpoints: the resumed run
    writes those steps again, and pruning must not keep them in place of good ones.
    """
    moved = []
    if not multihost.is_primary():  # multi-host: process 0 alone writes the run folder
        return moved
    for checkpoint in complete(root):
        if checkpoint.step > step:
            target = checkpoint.path.with_name(BROKEN_PREFIX + checkpoint.path.name)
            if target.exists():
                shutil.rmtree(target)
            os.replace(checkpoint.path, target)
            log.warning("moved broken checkpoint %s to %s", checkpoint.path, target.name)
            moved.append(target)
    return moved


def restore(
    checkpoint: Checkpoint, model: keras.Model, load_weights: Callable[[Path], None] | None = None
) -> dict[str, Any]:
    """Load weights, optimizer state (when the model is compiled) and RNG state into a built model.

    `save_weights` (in `save`) and `load_weights` replace `model.save_weights` / `load_weights`
    for a run that checkpoints part of its model (LoRA adapters, see `theseus.training.lora`).
    """
    verify(checkpoint.path)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # so its slots load too
    (load_weights or model.load_weights)(checkpoint.path / MODEL_FILE)
    state = checkpoint.state
    variables = rng_variables(model)
    if len(state.get("rng", [])) != len(variables):
        raise CheckpointError(
            f"{checkpoint.path}: holds {len(state.get('rng', []))} RNG states, the model has {len(variables)}"
        )
    for variable, value in zip(variables, state.get("rng", [])):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return state
