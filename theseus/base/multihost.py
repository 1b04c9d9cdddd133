"""Multi-host runs through JAX's own runtime: joining the job, who writes, what each feeds.

One job runs as N cooperating processes (one per host) that form one global device
mesh. Every process runs the same program; process 0 alone writes the run folder;
each process feeds only the rows of the global batch that its own devices hold; a
checkpoint gathers the sharded state so that it can be restored on any topology; and
when one process dies the job ends, within `topology/peer_timeout` seconds, so that a
rerun of every process resumes it (`PeerWatch`). With one process every function here is
a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import keras

from theseus.config import ConfigError

_ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
_ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
_ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
_joined: tuple | None = None  # the (coordinator, processes, id) this process joined
_watch: PeerWatch | None = None  # started when this process joins a job of several


def initialize(topology: Any) -> None:
    """Join the multi-host job that `topology` (a `Topology`) or the environment describes.

    Nothing happens for a single process. Must run before anything touches a JAX device;
    joining the same job again is a no-op.
    """
    global _joined
    coordinator = topology.coordinator or os.environ.get(_ENV_ADDRESSES, "")
    if not coordinator:
        if (topology.num_processes or 1) > 1:
            raise ConfigError(
                f"topology/num_processes={topology.num_processes} needs topology/coordinator "
                f"(host:port of process 0) or {_ENV_ADDRESSES}"
            )
        return
    if keras.backend.backend() != "jax":
        raise ConfigError(f"a multi-host run needs the JAX backend (this run uses {keras.backend.backend()})")
    processes = topology.num_processes if topology.num_processes is not None else _env_int(_ENV_PROCESSES)
    process_id = topology.process_id if topology.process_id is not None else _env_int(_ENV_PROCESS_ID)
    if coordinator != "auto":
        if processes is None or process_id is None:
            raise ConfigError(
                f"topology/coordinator={coordinator} needs topology/num_processes and topology/process_id "
                f"(or {_ENV_PROCESSES} and {_ENV_PROCESS_ID})"
            )
        if not 0 <= process_id < processes:
            raise ConfigError(f"topology/process_id={process_id} must be in [0, {processes})")
    job = (None if coordinator == "auto" else coordinator, processes, process_id)
    if _joined is not None:
        if job != _joined:
            raise ConfigError(f"this process already joined the multi-host job {_joined}, not {job}")
        return
    _join(*job, peer_timeout=topology.peer_timeout)
    _joined = job


def _join(coordinator: str | None, processes: int | None, process_id: int | None, peer_timeout: int) -> None:
    """`jax.distributed.initialize`, as `keras.distribution.initialize` calls it, but with
    JAX's own heartbeat set well past `peer_timeout`, so that `PeerWatch` ends a job whose
    process died with one line before JAX aborts it with a C++ trace. (Keras's call also
    agrees a random seed between processes; theseus sets the config's seed itself.)"""
    import jax

    if coordinator is not None:
        coordinator = coordinator.split(",")[0]  # Keras's list of job addresses: process 0's first
    try:
        jax.distributed.initialize(coordinator, processes, process_id, heartbeat_timeout_seconds=2 * peer_timeout + 10)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"cannot join the multi-host job at {coordinator}: {str(error).splitlines()[0]}") from None
    global _watch
    if jax.process_count() > 1:
        _watch = PeerWatch(peer_timeout)
        _watch.start()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from None


def process_count() -> int:
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    """This process's index in the job (0 with one process, or off JAX)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """Whether this process writes the run folder (metrics, config, checkpoints)."""
    return process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name`."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- a dead process

_BEATS = "theseus/heartbeat/"  # + process index: a counter, or FAILED and why
_FAILED = "failed: "


class PeerWatch(threading.Thread):
    """Ends the job, with one line and exit 1, when one of its processes dies.

    A dead process leaves the others waiting in a collective it will never join. So every
    process counts a heartbeat into JAX's key-value store from this thread (a step blocked
    in a collective does not stop it), and process 0 reads them all: one that has not
    changed for `timeout` seconds, or that says its process failed (`ends_together`),
    stops process 0 at once (exit 1, one line naming the process). The other processes need
    no watch: process 0 hosts JAX's coordination service, and when it ends JAX's runtime
    ends them within a second (with its own message). The run folder then holds the last
    complete checkpoint, and running every process again resumes from it.
    """

    def __init__(self, timeout: int) -> None:
        super().__init__(name="theseus-peer-watch", daemon=True)
        import jax
        from jax._src import distributed  # the joined job's client (as jax.experimental.multihost_utils uses it)

        self.client, self.timeout = distributed.global_state.client, timeout
        self.me, self.count = jax.process_index(), jax.process_count()
        self.interval = min(max(timeout / 5, 0.2), 10.0)
        self.beat = f"{_BEATS}{self.me}" if self.me else None  # process 0 reads the others' beats

    def run(self) -> None:
        heard: dict[str, tuple[str | None, float]] = {}  # a process's key -> its last beat, when it changed
        for count in itertools.count():
            try:
                if self.beat:
                    self.client.key_value_set(self.beat, str(count), allow_overwrite=True)
                else:
                    self.check(dict(self.client.key_value_dir_get(_BEATS)), heard)
            except Exception:  # the store is gone or busy: JAX's own heartbeat, set longer, stays the backstop
                pass
            time.sleep(self.interval)

    def check(self, beats: dict[str, str], heard: dict[str, tuple[str | None, float]]) -> None:
        """Process 0: stop when a process says it failed, or has been silent for `timeout`."""
        now = time.monotonic()
        for process in range(1, self.count):
            key = f"{_BEATS}{process}"
            beat = beats.get(key)
            if beat is not None and beat.startswith(_FAILED):
                self.stop(f"process {process} of the multi-host job failed ({beat[len(_FAILED) :]})")
            if key not in heard or heard[key][0] != beat:
                heard[key] = (beat, now)
            elif now - heard[key][1] > self.timeout:
                self.stop(
                    f"process {process} of the multi-host job has not answered for {self.timeout} s "
                    "(topology/peer_timeout): it died or its host is unreachable"
                )

    def stop(self, why: str) -> None:
        _leave(1, f"theseus: {why}; stopping. Run all {self.count} processes again to resume from the last checkpoint")

    def failed(self, error: BaseException) -> None:
        """This process fails: tell process 0, and leave without JAX's shutdown barrier.

        A runtime error from XLA may be a collective that failed because another process
        died (Gloo: "connection reset by peer"): then the watch's verdict comes first, so
        wait for it (process 0 stops the job, and JAX's runtime the others) before taking
        the error as this process's own.
        """
        import jax

        if isinstance(error, jax.errors.JaxRuntimeError):
            time.sleep(self.timeout + 2 * self.interval)
        why = (str(error).splitlines() or [type(error).__name__])[0]
        if self.beat:
            with contextlib.suppress(Exception):
                self.client.key_value_set(self.beat, _FAILED + why, allow_overwrite=True)
        code = getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt) else 1)
        atexit.register(_leave, code if isinstance(code, int) else 1)  # runs before JAX's own exit handler


def _leave(code: int, line: str = "") -> None:
    """End this process now: a collective or JAX's shutdown barrier would wait for the
    dead (or failed) process forever."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if line:
        os.write(2, (line + "\n").encode())
    os._exit(code)


@contextlib.contextmanager
def ends_together() -> Iterator[None]:
    """Around a job: if it fails in this process (an error, a full disk, a stop), the other
    processes of a multi-host job stop too, rather than wait for it in a collective; this
    process ends once its own error is reported, without waiting for them."""
    try:
        yield
    except BaseException as error:
        if _watch is not None:
            _watch.failed(error)
        raise


# ----------------------------------------------------------------------------- data


def local_rows(global_batch: int, distribution: keras.distribution.Distribution | None = None) -> slice:
    """The rows of a global batch that this process's devices hold, hence must feed.

    Keras's JAX trainer builds the global batch from each process's rows
    (`jax.make_array_from_process_local_data`); which rows those are follows from the
    distribution's data layout on the mesh (a batch replicated over processes is fed
    whole by each).
    """
    distribution = distribution or keras.distribution.distribution()
    if distribution is None or process_count() == 1:
        return slice(0, global_batch)
    sharding = distribution.get_data_layout((global_batch,)).backend_layout
    spans = sorted(
        {s.indices(global_batch)[:2] for (s,) in sharding.addressable_devices_indices_map((global_batch,)).values()}
    )
    start, stop = spans[0]
    for lo, hi in spans[1:]:
        if lo > stop:
            raise ValueError(f"this process's devices hold rows {spans} of the batch: not one contiguous slice")
        stop = max(stop, hi)
    return slice(start, stop)


class LocalBatches(keras.utils.PyDataset):
    """Rows `rows` of every batch of `dataset` (a `PyDataset` of global batches)."""

    def __init__(self, dataset: keras.utils.PyDataset, rows: slice) -> None:
        super().__init__()
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return keras.tree.map_structure(lambda array: array[self.rows], self.dataset[index])


def local_batches(dataset: keras.utils.PyDataset, batch_size: int) -> keras.utils.PyDataset:
    """`dataset` as this process feeds it: its own rows of each global batch."""
    rows = local_rows(batch_size)
    return dataset if rows == slice(0, batch_size) else LocalBatches(dataset, rows)


# ----------------------------------------------------------------------------- checkpoints


@contextlib.contextmanager
def gathered(variables: Iterable[keras.Variable]) -> Iterator[None]:
    """Inside, every variable reads as its whole value, gathered from all processes, so
    Keras's saving works on arrays that no process holds alone; and no distribution is
    set, so that what one process does inside (saving) starts no collective the others
    would have to join (Keras's saving creates an optimizer, for instance).

    A collective: every process must enter, with the same variables in the same order.
    """
    if process_count() == 1:
        yield
        return
    from jax.experimental import multihost_utils

    spread = [v for v in variables if not (v.value.is_fully_addressable or v.value.is_fully_replicated)]
    values = multihost_utils.process_allgather([v.value for v in spread], tiled=True)
    # Keras has no public way to make a variable read as another value while saving (a
    # `StatelessScope` fails: saving creates a reference optimizer), so hold the host copy
    # in the variable itself for the duration.
    originals = [v._value for v in spread]
    distribution = keras.distribution.distribution()
    try:
        for variable, value in zip(spread, values):
            variable._value = value
        keras.distribution.set_distribution(None)
        yield
    finally:
        keras.distribution.set_distribution(distribution)
        for variable, value in zip(spread, originals):
            variable._value = value


def model_state(model: keras.Model) -> list[keras.Variable]:
    """Every variable a checkpoint of `model` holds: its own, its optimizer's, its metrics'."""
    optimizer = getattr(model, "optimizer", None)
    found: dict[int, keras.Variable] = {}
    for variable in [
        *model.variables,
        *(optimizer.variables if optimizer is not None else []),
        *model.metrics_variables,
    ]:
        found.setdefault(id(variable), variable)
    return list(found.values())
