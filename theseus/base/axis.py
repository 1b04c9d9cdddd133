"""Names of the device-mesh axes.

Models never name these directly in their code: they name *logical* axes
(`theseus.model.axes.Axes`) and map them to these through their `sharding` rules.
"""

from enum import Enum


class Axis(str, Enum):
    """The two axes of every theseus `DeviceMesh`: `("batch", "shard")`.

    `BATCH` splits the global batch (data parallel; also parameters under FSDP),
    `SHARD` splits weights (tensor parallel).
    """

    BATCH = "batch"
    SHARD = "shard"

    def __str__(self) -> str:
        return self.value


MESH_AXES: tuple[str, ...] = (Axis.BATCH.value, Axis.SHARD.value)
