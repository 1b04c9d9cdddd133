"""Topology: the device mesh, and which parallelism strategy shards what over it.

Every theseus mesh has the axes `("batch", "shard")` (`Axis`): `topology/shard` devices
split weights (tensor parallelism) or experts (expert parallelism), the rest split the
batch. A strategy does not touch model code: it turns the model's `sharding` rules into the
rules applied (`strategy_rules`), `theseus.base.sharding` turns those into a Keras `LayoutMap`,
and training runs under Keras's own `DataParallel` or `ModelParallel`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import keras

from theseus.base import multihost
from theseus.base.axis import MESH_AXES, Axis
from theseus.base.sharding import Shardable, ShardingError, ShardingRules, build_abstractly
from theseus.config import ConfigError, field


class Strategy(str, enum.Enum):
    """How a run spends its devices (`topology/strategy`)."""

    DP = "dp"  # weights replicated; the batch split over every device
    TP = "tp"  # the model's rules: weights split over `shard`, the batch over `batch`
    FSDP = "fsdp"  # weights and optimizer state also split over `batch` (ZeRO-3)
    FSDP_TP = "fsdp+tp"  # both
    EP = "ep"  # experts split over `shard` (expert parallelism), other weights replicated
    FSDP_EP = "fsdp+ep"  # experts over `shard`, and every weight's residual width over `batch`

    @property
    def tensor_parallel(self) -> bool:
        return self in (Strategy.TP, Strategy.FSDP_TP)

    @property
    def expert_parallel(self) -> bool:
        return self in (Strategy.EP, Strategy.FSDP_EP)

    @property
    def uses_shard_axis(self) -> bool:
        return self.tensor_parallel or self.expert_parallel

    @property
    def fully_sharded(self) -> bool:
        return self in (Strategy.FSDP, Strategy.FSDP_TP, Strategy.FSDP_EP)

    def __str__(self) -> str:
        return self.value


def strategy_rules(
    strategy: Strategy, model_rules: ShardingRules, fsdp_axis: str, expert_axis: str | None = None
) -> ShardingRules:
    """The rules `strategy` applies. Fully-sharded strategies first split the model's
    `fsdp_axis` (a transformer's residual width: in every matrix, embedding and norm) over
    `batch`, so each device keeps 1/batch of those weights and of their optimizer slots,
    which follow their variable. Expert-parallel strategies split the model's `expert_axis`
    (the experts of a mixture-of-experts model; None: the model has none) over `shard`.
    Then the model's own rules, whose targets are kept under tensor parallelism and replaced
    by None (replicate) otherwise, so that what they cover stays covered."""
    strategy = Strategy(strategy)
    rules: ShardingRules = [(fsdp_axis, Axis.BATCH)] if strategy.fully_sharded else []
    if strategy.expert_parallel:
        if expert_axis is None:
            raise ShardingError("expert parallelism needs a model with experts (a mixture of experts); this has none")
        rules.append((expert_axis, Axis.SHARD))
    rules += [(logical, target if strategy.tensor_parallel else None) for logical, target in model_rules]
    return rules


@dataclasses.dataclass
class Topology:
    """The `topology:` section of a job: devices, strategy and (multi-host) processes."""

    strategy: Strategy = field(
        "topology/strategy", default=Strategy.DP, help="dp, tp, fsdp, fsdp+tp, ep or fsdp+ep (docs/sharding.md)"
    )
    shard: int = field(
        "topology/shard",
        default=1,
        bounds=">= 1",
        help="devices on the shard (tensor-parallel) axis; the rest form the batch axis",
    )
    devices: int = field(
        "topology/devices", default=0, bounds=">= 0", help="devices in the mesh; 0 = all of them (every process's)"
    )
    strict: bool = field(
        "topology/strict", default=False, help="refuse to replicate a weight that no sharding rule covers"
    )
    coordinator: str = field(
        "topology/coordinator",
        default="",
        help="multi-host: host:port of process 0, or auto (JAX finds the cluster); '' = env KERAS_DISTRIBUTION_JOB_ADDRESSES or one process",
    )
    num_processes: int | None = field(
        "topology/num_processes",
        default=None,
        bounds=">= 1",
        help="multi-host: processes in the job; null = env KERAS_DISTRIBUTION_NUM_PROCESSES",
    )
    process_id: int | None = field(
        "topology/process_id",
        default=None,
        bounds=">= 0",
        help="multi-host: this process (0 writes the run folder); null = env KERAS_DISTRIBUTION_PROCESS_ID",
    )
    peer_timeout: int = field(
        "topology/peer_timeout",
        default=180,
        bounds=">= 1",
        help="multi-host: seconds a process may go silent before process 0 stops the job (one line, exit 1)",
    )

    def __post_init__(self) -> None:
        try:
            self.strategy = Strategy(self.strategy)
        except ValueError:
            raise ConfigError(
                f"config key 'topology/strategy' must be one of {[s.value for s in Strategy]}, got {self.strategy!r}"
            ) from None
        if self.shard < 1 or self.devices < 0:  # also when built directly, without its config's bounds
            raise ConfigError(
                f"topology/shard must be >= 1 and topology/devices >= 0, got {self.shard} and {self.devices}"
            )
        if self.process_id is not None and self.num_processes is not None and self.process_id >= self.num_processes:
            raise ConfigError(f"topology/process_id={self.process_id} must be in [0, {self.num_processes})")
        if self.strategy.uses_shard_axis and self.shard == 1:
            raise ConfigError(
                f"topology/strategy={self.strategy} splits weights over the shard axis: set topology/shard > 1"
            )
        if not self.strategy.uses_shard_axis and self.shard > 1:
            raise ConfigError(
                f"topology/strategy={self.strategy} leaves the shard axis unused: set topology/shard=1, "
                f"or pick {'fsdp+tp' if self.strategy.fully_sharded else 'tp'}"
            )

    def rules(self, model: Shardable) -> ShardingRules:
        """The rules this topology shards `model` with."""
        # A model without experts has no `expert_axis` (`theseus.model.models.moe.MoE` has one).
        return strategy_rules(self.strategy, model.sharding, model.fsdp_axis, getattr(model, "expert_axis", None))

    def mesh(self) -> keras.distribution.DeviceMesh:
        """The `(batch, shard)` mesh over the first `devices` devices (JAX only)."""
        available = keras.distribution.list_devices()
        count = self.devices or len(available)
        if count > len(available):
            raise ConfigError(f"topology/devices={count} but only {len(available)} devices are visible")
        if multihost.process_count() > 1 and count != len(available):
            raise ConfigError(
                f"topology/devices={count}: a multi-host mesh spans all {len(available)} devices of the job"
            )
        if count % self.shard:
            raise ConfigError(f"topology/shard={self.shard} does not divide the {count} devices of the mesh")
        return keras.distribution.DeviceMesh((count // self.shard, self.shard), MESH_AXES, available[:count])

    def validate(
        self,
        batch_size: int | None = None,
        batch_key: str = "training/batch_size",
        build_model: Callable[[], Shardable] | None = None,
    ) -> keras.distribution.DeviceMesh | None:
        """Join the multi-host job, if the topology describes one, and check the topology
        against the devices, the global `batch_size` (the config key `batch_key`, for the
        message) and, given `build_model`, the model's weights; the mesh, or None off JAX.

        Run it before anything is written: every problem is a ConfigError.
        """
        multihost.initialize(self)
        if not self._sharding_backend():
            return None
        mesh = self.mesh()
        batch_devices = mesh.shape[0]
        if batch_size is not None and batch_size % batch_devices:
            raise ConfigError(
                f"{batch_key}={batch_size} does not split over the {batch_devices} devices of the batch axis "
                f"(topology: {mesh.devices.size} devices, shard={self.shard}); use a multiple of {batch_devices} "
                "or set topology/devices"
            )
        if build_model is not None:
            self.layout_map(build_model, mesh)
        return mesh

    def layout_map(
        self, build_model: Callable[[], Shardable], mesh: keras.distribution.DeviceMesh
    ) -> keras.distribution.LayoutMap | None:
        """Where the strategy puts each weight of the model `build_model()` makes (built
        abstractly: no memory); None under `dp`, which replicates every weight."""
        if self.strategy is Strategy.DP:
            return None
        model = build_abstractly(build_model)
        try:
            return model.layout_map(mesh, self.rules(model), strict=self.strict)
        except ShardingError as error:  # a weight the topology cannot split: the config's problem
            raise ConfigError(f"topology/strategy={self.strategy}, shard={self.shard}: {error}") from None

    def distribution(
        self, build_model: Callable[[], Shardable], batch_size: int | None = None
    ) -> keras.distribution.Distribution | None:
        """The Keras distribution to build and train under; None for plain one-device training.

        For a sharding strategy `build_model()` is called inside `abstract_build()` to learn
        the model's weights; build the model again, for real, under the distribution's scope.
        """
        mesh = self.validate(batch_size)
        if mesh is None or (self.strategy is Strategy.DP and mesh.devices.size == 1):
            return None
        if self.strategy is Strategy.DP:
            flat = keras.distribution.DeviceMesh(mesh.devices.shape[:1], (Axis.BATCH.value,), mesh.devices.flatten())
            return keras.distribution.DataParallel(device_mesh=flat, auto_shard_dataset=False)
        # theseus feeds each process its own rows (`multihost.local_batches`): no auto-sharding.
        return keras.distribution.ModelParallel(
            layout_map=self.layout_map(build_model, mesh), batch_dim_name=Axis.BATCH.value, auto_shard_dataset=False
        )

    def _sharding_backend(self) -> bool:
        """True on JAX; elsewhere only plain one-device training is possible."""
        backend = keras.backend.backend()
        if backend == "jax":
            return True
        if self.strategy is not Strategy.DP:
            raise ConfigError(
                f"topology/strategy={self.strategy} needs the JAX backend: Keras {keras.__version__} "
                f"shards variables only on JAX (this run uses {backend}); use strategy dp here"
            )
        if self.devices > 1:
            raise ConfigError(
                f"topology/devices={self.devices}: data parallelism over several devices needs the JAX backend "
                f"(this run uses {backend}); set topology/devices to 0 or 1"
            )
        return False


def check_placement(model: keras.Model) -> None:
    """Raise ShardingError unless every weight of `model` is laid out as the current
    distribution's layout map says (e.g. a layer named differently from the abstract
    build would silently fall back to replication)."""
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.ModelParallel):
        return
    wrong = []
    for variable in model.weights:
        layout = distribution.get_tensor_layout(variable.path)  # the layout map's entry, or None
        want = tuple(layout.axes) if layout is not None else None
        spec = tuple(variable.value.sharding.spec)
        got = spec + (None,) * (len(variable.shape) - len(spec))
        if want != got:
            wrong.append(f"{variable.path} is {got}, its layout map says {want}")
    if wrong:
        raise ShardingError(
            f"{len(wrong)} weights are not where the layout map puts them: "
            + "; ".join(wrong[:3])
            + (" ..." if len(wrong) > 3 else "")
            + " (do the model's layers have stable, explicit names?)"
        )
