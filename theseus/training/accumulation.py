"""Gradient accumulation: a global batch as several micro-batches, one optimizer step.

`training/micro_batch_size` sets how many sequences go through a forward/backward pass at
once; the optimizer (Keras's `gradient_accumulation_steps`) sums `micro_steps` of them
before it updates. The data is cut into micro-batches (`MicroBatches`) and the schedule
is read in optimizer steps (`PerOptimizerStep`), so neither sees the difference.
"""

from __future__ import annotations

from typing import Any

import keras

from theseus.config import ConfigError


def micro_steps(batch_size: int, micro_batch_size: int | None) -> int:
    """Forward/backward passes per optimizer step (a ConfigError unless it divides the batch)."""
    size = micro_batch_size or batch_size
    if size < 1 or batch_size % size:
        raise ConfigError(f"training/micro_batch_size={micro_batch_size} must divide training/batch_size={batch_size}")
    return batch_size // size


@keras.saving.register_keras_serializable(package="theseus")
class PerOptimizerStep(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` seen in optimizer steps under gradient accumulation.

    A Keras optimizer with `gradient_accumulation_steps=k` calls its schedule with the
    micro-batch counter; this divides it by k, so a schedule written in optimizer steps
    (as theseus's are) keeps its meaning, as with optax's `MultiSteps`.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, micro_steps: int) -> None:
        self.schedule, self.micro_steps = schedule, micro_steps

    def __call__(self, step: Any) -> Any:
        return self.schedule(keras.ops.floor_divide(step, self.micro_steps))

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "micro_steps": self.micro_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerOptimizerStep:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["micro_steps"])


class MicroBatches(keras.utils.PyDataset):
    """Each batch of `dataset` as `micro_steps` consecutive micro-batches of its rows.

    With the optimizer accumulating over `micro_steps` batches, one optimizer step still
    sees exactly the global batch, whatever fits in memory at once.
    """

    def __init__(self, dataset: keras.utils.PyDataset, micro_steps: int) -> None:
        super().__init__()
        self.dataset, self.micro_steps = dataset, micro_steps
        self._batch: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.dataset) * self.micro_steps

    def __getitem__(self, index: int):
        number, part = divmod(index, self.micro_steps)
        if self._batch[0] != number:  # each global batch is built once, not once per micro-batch
            self._batch = (number, self.dataset[number])

        def rows(array):
            size = len(array) // self.micro_steps
            return array[part * size : (part + 1) * size]

        return keras.tree.map_structure(rows, self._batch[1])


def accumulation(schedule: Any, micro_steps: int) -> dict[str, Any]:
    """The optimizer's arguments for `schedule` with gradients accumulated over `micro_steps` passes."""
    if micro_steps == 1:
        return {"learning_rate": schedule, "gradient_accumulation_steps": None}
    return {"learning_rate": PerOptimizerStep(schedule, micro_steps), "gradient_accumulation_steps": micro_steps}


def micro_batches(dataset: keras.utils.PyDataset, micro_steps: int) -> keras.utils.PyDataset:
    """`dataset` cut into micro-batches (itself when there is no accumulation)."""
    return MicroBatches(dataset, micro_steps) if micro_steps > 1 else dataset
