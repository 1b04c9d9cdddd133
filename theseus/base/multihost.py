"""Multi-host runs through JAX's own runtime: joining the job, who writes, what each feeds.

One job runs as N cooperating processes (one per host) that form one global device
mesh. Every process runs the same program; process 0 alone writes the run folder;
each process feeds only the rows of the global batch that its own devices hold; and a
checkpoint gathers the sharded state so that it can be restored on any topology.
With one process every function here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import keras

from theseus.config import ConfigError

_ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
_ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
_ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
_joined: tuple | None = None  # the (coordinator, processes, id) this process joined


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
    try:
        keras.distribution.initialize(*job)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"cannot join the multi-host job at {coordinator}: {str(error).splitlines()[0]}") from None
    _joined = job


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
