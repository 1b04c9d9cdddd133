"""`Layer`: the base of theseus's building blocks, configured by constructor arguments.

A model is configured by `field`s (its YAML); the layers inside it take plain constructor
arguments, which each layer names once in `config_args` to make its `get_config`.
"""

from __future__ import annotations

from typing import Any

import keras

from theseus.model.module import Module


def config_value(value: Any) -> Any:
    """A constructor argument as `get_config` stores it: initializers serialized, logical
    axes (a tuple of `Axes`, or of their names after `from_config`) as a list of names."""
    if isinstance(value, keras.initializers.Initializer):
        return keras.initializers.serialize(value)
    if isinstance(value, tuple):
        return [None if axis is None else str(axis) for axis in value]
    return value


class Layer(Module):
    """A `Module` whose config is the constructor arguments listed in `config_args`, each
    kept as the attribute of the same name."""

    config_args: tuple[str, ...] = ()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **{name: config_value(getattr(self, name)) for name in self.config_args}}
