"""Sharding rules -> a Keras `LayoutMap`, for any weights that know their logical axes.

A weight (a Keras variable) carries `logical_axes`: one name per dimension (a str, a
str-valued Enum such as `theseus.model.axes.Axes`, or None for "no logical axis"). Rules
are an ordered list of `(logical axis, mesh axis or None)`; `layout_map` joins the two
into the map that `keras.distribution.ModelParallel` shards with. Nothing here knows what
a model is: the model layer names the axes and the rules, the mesh layer picks the mesh.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import keras
from keras.src.backend.common import global_state

from theseus.config import refusals

AxisNames = tuple[str | None, ...]
"""A weight's logical axes, one per dimension (str-valued Enums count as their value)."""
ShardingRules = list[tuple[str, Any | None]]
"""Ordered `(logical axis, mesh axis, several mesh axes, or None = replicate)` rules."""


class ShardingError(ValueError):
    """A layout that cannot be applied (indivisible dimension, uncovered weight, ...)."""


class Shardable(Protocol):
    """What a mesh needs of a model: weights with logical axes, rules, and the axis FSDP splits."""

    weights: list

    @property
    def sharding(self) -> ShardingRules: ...

    @property
    def fsdp_axis(self) -> str: ...

    def layout_map(
        self, mesh: keras.distribution.DeviceMesh, rules: ShardingRules | None = None, *, strict: bool = False
    ) -> keras.distribution.LayoutMap: ...


def axis_name(axis: Any) -> str | None:
    """A logical axis as the plain string rules name it (None stays None)."""
    return None if axis is None else str(getattr(axis, "value", axis))


def logical_axes(weights: Sequence[keras.Variable]) -> dict[str, tuple | None]:
    """Every weight's path and its logical axes (None where it declared none)."""
    return {v.path: getattr(v, "logical_axes", None) for v in weights}


def uncovered(weights: Sequence[keras.Variable], rules: ShardingRules) -> dict[str, tuple | None]:
    """Weights the rules say nothing about: no logical axes, or an axis no rule names.

    An explicit `(axis, None)` rule covers its axis (replicating it is then a decision).
    """
    named = {axis_name(logical) for logical, _ in rules}
    return {
        path: axes
        for path, axes in logical_axes(weights).items()
        if axes is None or any(a is not None and axis_name(a) not in named for a in axes)
    }


def layout_map(
    weights: Sequence[keras.Variable],
    mesh: keras.distribution.DeviceMesh,
    rules: ShardingRules,
    *,
    strict: bool = False,
) -> keras.distribution.LayoutMap:
    """The `LayoutMap` for `weights` on `mesh`, keyed by exact variable path.

    A weight whose dimension does not divide its mesh axis is an error (Keras would silently
    leave it, and every later weight, unsharded); with `strict`, so is a weight that no rule
    covers (see `uncovered`). A weight without logical axes is replicated.
    """
    if strict:
        missing = uncovered(weights, rules)
        if missing:
            raise ShardingError(
                f"{len(missing)} weights are covered by no sharding rule and would be replicated: "
                + ", ".join(f"{path} {axes}" for path, axes in list(missing.items())[:5])
                + (" ..." if len(missing) > 5 else "")
            )
    mesh_shape = dict(zip(mesh.axis_names, mesh.shape))
    result = keras.distribution.LayoutMap(mesh)
    for variable in weights:
        axes = getattr(variable, "logical_axes", None)
        shape = tuple(variable.shape)
        result[variable.path] = (
            (None,) * len(shape) if axes is None else resolve_layout(axes, shape, rules, mesh_shape, variable.path)
        )
    return result


def resolve_layout(
    axes: Sequence[Any],
    shape: tuple[int, ...],
    rules: ShardingRules,
    mesh_shape: dict[str, int],
    path: str = "",
) -> tuple[Any | None, ...]:
    """Mesh axes for one weight: per dimension, the first rule for its logical axis whose
    mesh axis is not yet used by this weight (flax's semantics; None = replicated)."""
    used: set[str] = set()
    layout: list[Any | None] = []
    for dim, (logical, size) in enumerate(zip(axes, shape)):
        name = axis_name(logical)
        chosen = None
        for rule_axis, mesh_axis in rules if name is not None else ():
            if axis_name(rule_axis) != name:
                continue
            mesh_names = _mesh_names(mesh_axis)
            if mesh_names is None:
                break  # an explicit "replicate" rule ends the search
            if used.intersection(mesh_names) or any(m not in mesh_shape for m in mesh_names):
                continue
            degree = math.prod(mesh_shape[m] for m in mesh_names)
            if size % degree:
                raise ShardingError(
                    f"weight {path} dimension {dim} ({name}, size {size}) does not "
                    f"divide mesh axis {mesh_axis} of size {degree}"
                )
            used.update(mesh_names)
            chosen = mesh_names[0] if len(mesh_names) == 1 else mesh_names
            break
        layout.append(chosen)
    return tuple(layout)


def _mesh_names(mesh_axis: Any) -> tuple[str, ...] | None:
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


def build_abstractly(build: Callable[[], Any], section: str = "architecture") -> Any:
    """`build()` inside `abstract_build()`: the model a config describes, made without a byte
    of memory, so that a job refuses a model its constructor refuses before anything is
    written; that refusal (a ValueError, TypeError or AssertionError) is one ConfigError
    naming the config `section` (`theseus.config.refusals`)."""
    with refusals(section), abstract_build():
        return build()


__all__ = [
    "AxisNames",
    "Shardable",
    "ShardingError",
    "ShardingRules",
    "abstract_build",
    "axis_name",
    "build_abstractly",
    "layout_map",
    "logical_axes",
    "resolve_layout",
    "uncovered",
]
