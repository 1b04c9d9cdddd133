"""From a job key and config values to a run folder: lookup, validation, launch, and
the exit status both entry points (`theseus`, `python -m theseus.recipes`) end with.

Everything that can be wrong with the input is checked before the run folder is
touched, so bad input never creates or overwrites anything.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None

from theseus.base import backend
from theseus.base.jobs import JOB_KEY, config_text, plugin_modules, unknown_job
from theseus.base.multihost import ends_together, is_primary
from theseus.config import (
    ConfigError,
    Field,
    collect,
    flatten,
    load_yaml,
    resolve,
    write_atomic,
)

CONFIG_FILE = "config.yaml"
RESUMABLE_CHANGES = ("logging/", "topology/")  # keys that may differ when a run is resumed
LOCK_FILE = ".lock"  # held by the process writing the run folder (see `RunLock`)


def load_plugins() -> None:
    """Import the modules that register user jobs (env `THESEUS_PLUGINS`, entry points)."""
    for name in plugin_modules():
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
        raise unknown_job(key, registry)
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


def prepare_run_dir(run_dir: Path, key: str, fields: Mapping[str, Field], values: Mapping[str, Any]) -> None:
    """Create `run_dir` with its `config.yaml`, or check that an existing run matches it."""
    text = config_text(key, fields, values)
    check_run_dir(run_dir, key, values)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_primary():  # multi-host: process 0 alone writes the run folder
        write_atomic(run_dir / CONFIG_FILE, text)


def check_run_dir(run_dir: Path, key: str, values: Mapping[str, Any]) -> None:
    """A ConfigError when `run_dir` holds a run of another job or config (which resuming would mix up)."""
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


def set_aside(run_dir: Path) -> Path:
    """Rename an existing run folder to `NAME.old-YYYYmmdd-HHMMSS` (never delete a run); the new path."""
    target = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target, suffix = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"), suffix + 1
    os.replace(run_dir, target)
    print(f"moved the previous run to {target}", flush=True)
    return target


class RunFolderBusy(ConfigError):
    """Another live process is writing the run folder (exit 2, like any refused input)."""


class RunLock:
    """One writer per run folder: an OS lock (`flock`) on `RUN/.lock`, held for a job's life.

    The kernel drops the lock when its process ends, however it ends (SIGKILL, a crash, a
    lost machine's process table), so a lock left by a dead process is simply taken over;
    the file's text (pid, host, start time) only names the holder in the one line that
    refuses a second writer, who changes nothing in the folder. Taken before anything in the
    folder is written (before `--fresh` sets it aside), released when the job ends.

    Multi-host: process 0 alone writes the run folder, so it alone takes the lock; the other
    processes of a job take none. They could not all hold it: on a shared file system
    (NFS, Lustre) `flock` may be emulated with POSIX locks that conflict between hosts, so
    process 1 would be refused by its own process 0. A second job on the same folder is
    refused by its process 0; its other processes, which write nothing, are left to notice
    that their process 0 is gone (as after any death of process 0).
    Without `fcntl` (Windows) nothing is locked.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder), or raise `RunFolderBusy` naming its holder."""
        if fcntl is None or not is_primary():
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated unless held
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"run folder {self.run_dir} is being written by {holder}; one process at a time: "
                "wait for it to end or stop it, then run this again (nothing was changed)"
            ) from None
        left = os.pread(fd, 1, 0)
        if left:  # a holder that died without releasing it (a clean end empties the file)
            print(
                f"taking over the lock of run folder {self.run_dir} from {_holder(fd)} (no longer running)", flush=True
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        _unlock(self.fd)
        self.fd = None

    def holds_a_run(self) -> bool:
        """Whether the folder holds anything besides the lock (a run that `--fresh` sets aside)."""
        return self.run_dir.is_dir() and any(p.name != LOCK_FILE for p in self.run_dir.iterdir())

    def set_aside(self) -> Path:
        """`--fresh`: move the locked folder aside (`set_aside`), then lock a new one in its place."""
        old, self.fd = self.fd, None
        try:
            target = set_aside(self.run_dir)
            self.acquire()
        finally:
            _unlock(old)  # the set-aside folder's lock, once the new folder's is held
        return target

    def moved(self, run_dir: str | os.PathLike) -> None:
        """The locked folder was renamed to `run_dir` (the lock goes with it)."""
        self.run_dir = Path(run_dir)


def _holder(fd: int) -> str:
    """Who holds a lock, from its file's text, in words."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (ValueError, KeyError, TypeError):  # taken a moment ago, not yet written
        return "another process"


def _unlock(fd: int | None) -> None:
    """Release a lock taken by `RunLock.acquire`, emptying its file first (a clean end)."""
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def launch(
    key: str,
    fields: Mapping[str, Field],
    values: Mapping[str, Any],
    out_dir: str | os.PathLike,
    name: str,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run job `key` in `out_dir/name`, resuming it if it exists (unless `fresh`: then the
    old folder is set aside and the run starts over); its result dict. The folder is locked
    (`RunLock`) while the job runs: a second launch on it is refused."""
    cls = job_class(key)
    backend.Backend(backend=values.get(backend.KEY))  # the config's backend is the one Keras runs
    run_dir = Path(out_dir) / name
    with ends_together():  # multi-host: a process that fails here stops the others
        job = cls(dict(values), run_dir)  # constructing validates what the config alone cannot (and joins)
        if not fresh:
            check_run_dir(run_dir, key, values)  # refused before the lock: a refused run leaves no trace
        with RunLock(run_dir) as lock:  # one writer per run folder, until the job ends
            if fresh and lock.holds_a_run():
                lock.set_aside()
            prepare_run_dir(run_dir, key, fields, values)
            result = job.run() or {}
    contents = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if p.name != LOCK_FILE)
    print(f"run folder: {run_dir} ({', '.join(contents)})", flush=True)
    return result
