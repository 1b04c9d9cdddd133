"""`Module`: a Keras layer whose weights know their logical axes.

A Module declares its hyper-parameters as `field(...)`s (so they appear in the job's
YAML and are its constructor arguments), creates each weight with the logical axes of
its dimensions (`add_weight(..., axes=(Axes.N_EMBD, Axes.N_EMBD_FF))`), and gives
`sharding` rules mapping logical axes to mesh axes. `layout_map` joins the two into the
`keras.distribution.LayoutMap` that `ModelParallel` shards the model with. No model code
names a device or a mesh axis.

The rule -> layout machinery itself is `theseus.base.sharding`; this module re-exports its
vocabulary. `layout_map` needs a built model: build it once inside `abstract_build()` (shapes, paths
and axes, no memory), compute the map, then build the real model under `ModelParallel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from theseus.base import sharding as layouts
from theseus.base.sharding import ShardingError, ShardingRules, abstract_build, resolve_layout
from theseus.config import check_bounds, fields_of
from theseus.model.axes import Axes

LogicalAxes = tuple[Axes | None, ...]


class Module(keras.Layer):
    """A Keras layer with config fields, logical axes on its weights and sharding rules.

    Subclasses declare fields as class attributes (`n_embd: int = field("architecture/n_embd",
    default=128)`), list nested configurable classes in `components()`, override `sharding`
    and implement the forward pass in `call` (Keras's `__call__` runs it).

    Args:
        **kwargs: values for the declared fields (by attribute name), then the usual
            `keras.Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        values = {}
        for f in fields_of(type(self)):
            if f.attr in kwargs:
                values[f.attr] = check_bounds(f, kwargs.pop(f.attr))  # e.g. n_layer >= 1
            elif f.required:
                raise TypeError(f"{type(self).__name__} needs `{f.attr}` (config key '{f.key}')")
            else:
                values[f.attr] = f.default_value()
        super().__init__(**kwargs)
        self._field_values = values
        for attr, value in values.items():
            object.__setattr__(self, attr, value)  # plain values: no Keras tracking wanted

    @classmethod
    def components(cls) -> list[type]:
        """Configurable classes (sub-modules, config dataclasses) that feed this one's YAML."""
        return []

    @property
    def sharding(self) -> ShardingRules:
        """Ordered `(logical axis, mesh axis or None)` rules; the first that fits wins."""
        return []

    def add_weight(self, *args: Any, axes: Sequence[Axes | None] | None = None, **kwargs: Any):
        """`keras.Layer.add_weight`, plus the weight's logical axes (one per dimension)."""
        variable = super().add_weight(*args, **kwargs)
        if axes is not None:
            axes = tuple(Axes(a) if a is not None else None for a in axes)
            if len(axes) != len(variable.shape):
                raise ShardingError(
                    f"weight {variable.path} has shape {tuple(variable.shape)} but {len(axes)} logical axes {axes}"
                )
        variable.logical_axes = axes
        return variable

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._field_values}

    # ------------------------------------------------------------------ layouts

    @property
    def fsdp_axis(self) -> str:
        """The logical axis fully-sharded strategies split over the batch axis: one that
        every large weight has (a transformer's residual width)."""
        return Axes.N_EMBD.value

    def logical_axes(self) -> dict[str, LogicalAxes | None]:
        """Every weight's path and its logical axes (None where it declared none)."""
        return layouts.logical_axes(self.weights)

    def layout_map(
        self,
        mesh: keras.distribution.DeviceMesh,
        rules: ShardingRules | None = None,
        *,
        strict: bool = False,
    ) -> keras.distribution.LayoutMap:
        """The `LayoutMap` for this (built) model on `mesh` (`theseus.base.sharding.layout_map`);
        `rules` default to `self.sharding`."""
        if not self.built:
            raise ShardingError(f"{self.name}: build the model before asking for its layout map")
        return layouts.layout_map(self.weights, mesh, self.sharding if rules is None else rules, strict=strict)

    def uncovered(self, rules: ShardingRules | None = None) -> dict[str, LogicalAxes | None]:
        """Weights `rules` (default: `self.sharding`) say nothing about (`theseus.base.sharding.uncovered`)."""
        return layouts.uncovered(self.weights, self.sharding if rules is None else rules)


__all__ = ["LogicalAxes", "Module", "ShardingError", "ShardingRules", "abstract_build", "resolve_layout"]
