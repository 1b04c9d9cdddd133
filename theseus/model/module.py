"""`Module`: a Keras layer whose weights know their logical axes.

A Module declares its hyper-parameters as `field(...)`s (so they appear in the job's
YAML and are its constructor arguments), creates each weight with the logical axes of
its dimensions (`add_weight(..., axes=(Axes.N_EMBD, Axes.N_EMBD_FF))`), and gives
`sharding` rules mapping logical axes to mesh axes. `layout_map` joins the two into the
`keras.distribution.LayoutMap` that `ModelParallel` shards the model with. No model code
names a device or a mesh axis.

`layout_map` needs a built model: build it once inside `abstract_build()` (shapes, paths
and axes, no memory), compute the map, then build the real model under `ModelParallel`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Optional, Sequence

import keras
from keras.src.backend.common import global_state

from theseus.config import fields_of
from theseus.model.axes import Axes

LogicalAxes = tuple[Optional[Axes], ...]
ShardingRules = list[tuple[str, Optional[Any]]]


class ShardingError(ValueError):
    """A layout that cannot be applied (indivisible dimension, uncovered weight, ...)."""


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
                values[f.attr] = kwargs.pop(f.attr)
            elif f.required:
                raise TypeError(
                    f"{type(self).__name__} needs `{f.attr}` (config key '{f.key}')"
                )
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

    def add_weight(self, *args: Any, axes: Optional[Sequence[Optional[Axes]]] = None, **kwargs: Any):
        """`keras.Layer.add_weight`, plus the weight's logical axes (one per dimension)."""
        variable = super().add_weight(*args, **kwargs)
        if axes is not None:
            axes = tuple(Axes(a) if a is not None else None for a in axes)
            if len(axes) != len(variable.shape):
                raise ShardingError(
                    f"weight {variable.path} has shape {tuple(variable.shape)} but "
                    f"{len(axes)} logical axes {axes}"
                )
        variable.logical_axes = axes
        return variable

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._field_values}

    # ------------------------------------------------------------------ layouts

    def logical_axes(self) -> dict[str, Optional[LogicalAxes]]:
        """Every weight's path and its logical axes (None where it declared none)."""
        return {v.path: getattr(v, "logical_axes", None) for v in self.weights}

    def layout_map(
        self,
        mesh: keras.distribution.DeviceMesh,
        rules: Optional[ShardingRules] = None,
        *,
        strict: bool = False,
    ) -> keras.distribution.LayoutMap:
        """The `LayoutMap` for this (built) model on `mesh`, keyed by exact variable path.

        `rules` default to `self.sharding`. A weight whose dimension does not divide its
        mesh axis is an error (Keras would silently leave it, and every later weight,
        unsharded); with `strict`, so is a weight that no rule covers (see `uncovered`).
        """
        if not self.built:
            raise ShardingError(f"{self.name}: build the model before asking for its layout map")
        rules = self.sharding if rules is None else rules
        if strict:
            uncovered = self.uncovered(rules)
            if uncovered:
                raise ShardingError(
                    f"{len(uncovered)} weights are covered by no sharding rule and would be replicated: "
                    + ", ".join(f"{path} {axes}" for path, axes in list(uncovered.items())[:5])
                    + (" ..." if len(uncovered) > 5 else "")
                )
        mesh_shape = dict(zip(mesh.axis_names, mesh.shape))
        layout_map = keras.distribution.LayoutMap(mesh)
        for variable in self.weights:
            axes = getattr(variable, "logical_axes", None)
            if axes is None:
                layout = (None,) * len(variable.shape)
            else:
                layout = resolve_layout(axes, tuple(variable.shape), rules, mesh_shape, variable.path)
            layout_map[variable.path] = layout
        return layout_map

    def uncovered(self, rules: Optional[ShardingRules] = None) -> dict[str, Optional[LogicalAxes]]:
        """Weights the rules say nothing about: no logical axes, or an axis no rule names.

        An explicit `(axis, None)` rule covers its axis (replicating it is then a decision).
        """
        rules = self.sharding if rules is None else rules
        named = {str(logical) for logical, _ in rules}
        return {
            path: axes
            for path, axes in self.logical_axes().items()
            if axes is None or any(a is not None and a.value not in named for a in axes)
        }


def resolve_layout(
    axes: LogicalAxes,
    shape: tuple[int, ...],
    rules: ShardingRules,
    mesh_shape: dict[str, int],
    path: str = "",
) -> tuple[Optional[str], ...]:
    """Mesh axes for one weight: per dimension, the first rule for its logical axis whose
    mesh axis is not yet used by this weight (flax's semantics; None = replicated)."""
    used: set[str] = set()
    layout: list[Optional[str]] = []
    for dim, (logical, size) in enumerate(zip(axes, shape)):
        chosen = None
        if logical is not None:
            for rule_axis, mesh_axis in rules:
                if str(rule_axis) != logical.value:
                    continue
                mesh_names = _mesh_names(mesh_axis)
                if mesh_names is None:
                    break  # an explicit "replicate" rule ends the search
                if used.intersection(mesh_names) or any(m not in mesh_shape for m in mesh_names):
                    continue
                degree = math.prod(mesh_shape[m] for m in mesh_names)
                if size % degree:
                    raise ShardingError(
                        f"weight {path} dimension {dim} ({logical.value}, size {size}) does not "
                        f"divide mesh axis {mesh_axis} of size {degree}"
                    )
                used.update(mesh_names)
                chosen = mesh_names[0] if len(mesh_names) == 1 else mesh_names
                break
        layout.append(chosen)
    return tuple(layout)


def _mesh_names(mesh_axis: Any) -> Optional[tuple[str, ...]]:
    """A rule's target as a tuple of mesh-axis names (a rule may name several)."""
    if mesh_axis is None:
        return None
    if isinstance(mesh_axis, (tuple, list)):
        return tuple(str(m) for m in mesh_axis)
    return (str(mesh_axis),)


@contextlib.contextmanager
def abstract_build() -> Iterator[None]:
    """Layers created and built inside get variables with shapes, paths and logical axes
    but no values: a model's layout is known before a byte of it is allocated.

    On exit Keras forgets those variables (nothing initialises them later) and hands out
    the same automatic layer names again, so the real model built next gets the same
    variable paths as the abstract one: the keys of its `layout_map`.
    """
    # Keras keeps both in its global state; there is no public accessor for either.
    names = copy.deepcopy(global_state.get_global_attribute("object_name_uids"))
    pending = list(global_state.get_global_attribute("uninitialized_variables") or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("object_name_uids", names)
        global_state.set_global_attribute("uninitialized_variables", pending)
