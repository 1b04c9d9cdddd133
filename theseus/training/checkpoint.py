"""Checkpoints on disk: complete or absent, never half-written.

A checkpoint is a folder `checkpoints/step_00000100/` holding `model.weights.h5` (Keras's
own format, readable by every backend: the model's variables, dropout RNG state included,
and its optimizer's), `state.json` (step, tokens, ...) and `manifest.json` (size and
SHA-256 of every file). It is written into a temporary folder
and renamed into place, so a crash leaves either the whole checkpoint or none; a loader
checks the manifest and skips a checkpoint that does not match it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from theseus.config import write_atomic

log = logging.getLogger("theseus")

MODEL_FILE = "model.weights.h5"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.path / STATE_FILE).read_text())


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def save(root: str | os.PathLike, model: keras.Model, state: dict[str, Any], keep: int = 3) -> Checkpoint:
    """Write a checkpoint of `model` (and its optimizer) at `state["step"]` under `root`.

    Keeps the newest `keep` checkpoints (0 keeps all) and updates `root/latest`.
    """
    root = Path(root)
    step = int(state["step"])
    final = step_dir(root, step)
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_weights(tmp / MODEL_FILE)  # the optimizer's variables too, once it is built
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _digest(tmp / name)} for name in files}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for name in files + [MANIFEST_FILE]:  # durable before it becomes visible
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # the same step saved again (e.g. SIGTERM right after a save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(root / "latest", final.name + "\n")
    if keep > 0:
        for old in complete(root)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


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
        if file.stat().st_size != entry["bytes"] or _digest(file) != entry["sha256"]:
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


def restore(checkpoint: Checkpoint, model: keras.Model) -> dict[str, Any]:
    """Load weights (and optimizer state, when the model is compiled) into a built model."""
    verify(checkpoint.path)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # so its slots load too
    model.load_weights(checkpoint.path / MODEL_FILE)
    return checkpoint.state
