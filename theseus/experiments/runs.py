"""From a job key and config values to a run folder: lookup, validation, launch, and
the exit status both entry points (`theseus`, `python -m theseus.recipes`) end with.

Everything that can be wrong with the input is checked before the run folder is
touched, so bad input never creates or overwrites anything.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from theseus.base import backend
from theseus.base.multihost import is_primary
from theseus.config import (
    ConfigError,
    Field,
    collect,
    did_you_mean,
    dump_yaml,
    flatten,
    load_yaml,
    resolve,
    write_atomic,
)

JOB_KEY = "job"
CONFIG_FILE = "config.yaml"
RESUMABLE_CHANGES = ("logging/", "topology/")  # keys that may differ when a run is resumed


def load_plugins() -> None:
    """Import the modules that register user jobs (env `THESEUS_PLUGINS`, entry points)."""
    names = [n.strip() for n in os.environ.get("THESEUS_PLUGINS", "").split(",") if n.strip()]
    names += [ep.value for ep in entry_points(group="theseus.plugins")]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"cannot import plugin module {name!r}: {error}") from None


def jobs() -> dict[str, type]:
    """`JOBS` with the plugins' jobs added."""
    from theseus.experiments import JOBS  # the package imports every job module, some of which import this one

    load_plugins()
    return JOBS


def job_class(key: str) -> type:
    registry = jobs()
    if key not in registry:
        hint = did_you_mean(key, registry, cutoff=0.4)
        raise ConfigError(f"unknown job '{key}'{hint}; `theseus jobs` lists them")
    return registry[key]


def summary(cls: type) -> str:
    """The first line of a job's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def table(cls: type) -> dict[str, Field]:
    """A job's config fields: its components', plus `topology/backend`, which every job has."""
    return collect([*cls.components(), backend.Backend])


def configure(
    key: str, overrides: Mapping[str, Any] | None = None, *, require: bool = False
) -> tuple[dict[str, Field], dict[str, Any]]:
    """The job's full config: defaults plus overrides, validated (`???` allowed unless `require`)."""
    fields = table(job_class(key))
    return fields, resolve(fields, {}, overrides, require=require)


def read_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None, job: str | None = None):
    """A config file plus overrides, validated against its job; returns (key, fields, values)."""
    flat = load_yaml(path)
    key = flat.pop(JOB_KEY, None) or job
    if key is None:
        raise ConfigError(f"config file {path} names no job (a top-level `job:` key)")
    if job is not None and key != job:
        raise ConfigError(f"config file {path} is for job '{key}', not '{job}'")
    fields = table(job_class(key))
    return key, fields, resolve(fields, flat, overrides)


def config_text(key: str, fields: Mapping[str, Field], values: Mapping[str, Any]) -> str:
    header = f"theseus config for job {key}; `???` marks a value you must set."
    return dump_yaml({JOB_KEY: key, **values}, fields, header=header)


def prepare_run_dir(run_dir: Path, key: str, fields: Mapping[str, Field], values: Mapping[str, Any]) -> None:
    """Create `run_dir` with its `config.yaml`, or check that an existing run matches it."""
    text = config_text(key, fields, values)
    existing = run_dir / CONFIG_FILE
    if existing.is_file():
        old = flatten(load_yaml(existing))
        old_key = old.pop(JOB_KEY, None)
        changed = sorted(
            k for k in set(old) | set(values) if old.get(k) != values.get(k) and not k.startswith(RESUMABLE_CHANGES)
        )
        if old_key != key or changed:
            what = f"job {old_key!r}" if old_key != key else ", ".join(changed[:6])
            raise ConfigError(
                f"run folder {run_dir} already holds a run with a different config ({what}); "
                "resuming it would be wrong: pick another name, or pass --fresh to start over (the old folder is moved aside)"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_primary():  # multi-host: process 0 alone writes the run folder
        write_atomic(existing, text)


def set_aside(run_dir: Path) -> Path:
    """Rename an existing run folder to `NAME.old-YYYYmmdd-HHMMSS` (never delete a run); the new path."""
    target = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target, suffix = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"), suffix + 1
    os.replace(run_dir, target)
    print(f"moved the previous run to {target}", flush=True)
    return target


def launch(
    key: str,
    fields: Mapping[str, Field],
    values: Mapping[str, Any],
    out_dir: str | os.PathLike,
    name: str,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run job `key` in `out_dir/name`, resuming it if it exists (unless `fresh`: then the
    old folder is set aside and the run starts over); its result dict."""
    cls = job_class(key)
    backend.Backend(backend=values.get(backend.KEY))  # the config's backend is the one Keras runs
    run_dir = Path(out_dir) / name
    job = cls(dict(values), run_dir)  # constructing validates what the config alone cannot
    if fresh and run_dir.exists():
        set_aside(run_dir)
    prepare_run_dir(run_dir, key, fields, values)
    result = job.run() or {}
    contents = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir())
    print(f"run folder: {run_dir} ({', '.join(contents)})", flush=True)
    return result
