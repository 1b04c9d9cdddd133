"""Configuration: slash keys on dataclass (and Module) attributes, one YAML tree per job.

A class declares what it reads with `field("section/name", default=...)`. A job's
`components()` lists the classes it builds; `collect` gathers all their fields into one
flat `{key: Field}` table, `tree` turns it into the nested YAML a user edits, and
`resolve` reads it back, applies `key=value` overrides and validates every value, so
that a wrong key, a wrong type or an unset required value is one clear `ConfigError`
before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import os
import sys
import tempfile
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

MISSING_MARK = "???"
_KEY = "theseus_key"
_HELP = "theseus_help"
_BOUNDS = "theseus_bounds"


class ConfigError(ValueError):
    """A configuration problem a user can fix; the CLI prints it as one line."""

    exit_code = 2


def exit_status(error: Exception) -> int:
    """How a command ends on `error`, said on one line of stderr, for both entry points.

    An error that carries an `exit_code` is one a user can act on: bad input (ConfigError,
    exit 2) or a run stopped early (`theseus.training.callbacks.TrainingStopped`, its own
    code). Anything else is a bug and propagates with its traceback. Nothing here imports
    Keras, so bad input found before a backend is chosen is still one quick line.
    """
    code = getattr(error, "exit_code", None)
    if not isinstance(code, int):
        raise error
    label = "error: " if isinstance(error, ConfigError) else ""
    print(f"theseus: {label}{error}", file=sys.stderr)
    return code


def field(
    key: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    bounds: str = "",
) -> Any:
    """Bind an attribute to the config key `key` (e.g. `"architecture/n_embd"`).

    Works on dataclasses and, as a plain class attribute, on `Module` subclasses.
    Without a default the value is required and `theseus configure` writes `???`.
    `bounds` limits a number: `">= 1"`, `"> 0"`, or an interval such as `"[0, 1)"`
    (`check_bounds`; None, where the type allows it, is always accepted).
    """
    if "/" not in key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"Argument `key` must look like 'section/name'. Received: key={key!r}")
    if bounds:
        _within(0, bounds)  # a malformed bound fails where it is declared
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        kw_only=True,  # required and defaulted fields may then come in any order
        metadata={_KEY: key, _HELP: help, _BOUNDS: bounds},
    )


def _within(value: float, bounds: str) -> bool:
    """Whether `value` satisfies `bounds` (`">= 1"`, `"> 0"`, `"[0, 1)"`, `"(0, 1]"`, ...)."""
    text = bounds.replace(" ", "")
    if text[:1] in "[(" and text[-1:] in "])":
        low, high = (float(part) for part in text[1:-1].split(","))
        above = value >= low if text[0] == "[" else value > low
        return above and (value <= high if text[-1] == "]" else value < high)
    for operator, test in ((">=", float.__ge__), (">", float.__gt__), ("<=", float.__le__), ("<", float.__lt__)):
        if text.startswith(operator):
            return test(float(value), float(text[len(operator) :]))
    raise ValueError(f"Argument `bounds` must look like '>= 1' or '[0, 1)'. Received: bounds={bounds!r}")


def check_bounds(f: Field, value: Any) -> Any:
    """`value` of the field `f`, or a ConfigError naming its key when it is outside `f.bounds`."""
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for number in numbers:
        if f.bounds and isinstance(number, (int, float)) and not isinstance(number, bool):
            if not _within(number, f.bounds):
                shown = "in " + f.bounds if f.bounds[0] in "[(" else f.bounds
                raise ConfigError(f"{f.key} must be {shown}, got {value!r}")
    return value


@contextlib.contextmanager
def refusals(section: str) -> Iterator[None]:
    """A constructor's ValueError, TypeError or AssertionError inside, raised as one ConfigError
    naming the config `section` it came from (`"architecture: n_embd=128 is not divisible by
    n_head=3"`): a value of the right type that a model or trainer refuses is bad input."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError, AssertionError) as error:
        text = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"{section}: {text}") from None


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key as declared by one class."""

    key: str
    attr: str
    owner: type
    type: Any
    default: Any
    default_factory: Any
    help: str
    bounds: str = ""

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING and self.default_factory is dataclasses.MISSING

    def default_value(self) -> Any:
        if self.default_factory is not dataclasses.MISSING:
            return self.default_factory()
        return self.default


def _annotation(klass: type, attr: str) -> Any:
    """The evaluated annotation of `klass.attr` (string annotations included)."""
    annotation = klass.__dict__.get("__annotations__", {}).get(attr, Any)
    if isinstance(annotation, str):
        namespace = dict(vars(sys.modules[klass.__module__]))
        namespace.update(vars(typing))
        try:
            annotation = eval(annotation, namespace)  # noqa: S307 - annotations are code
        except Exception:  # an annotation we cannot evaluate is not checked
            annotation = Any
    return annotation


def fields_of(cls: type) -> list[Field]:
    """The fields that `cls` itself declares (through its base classes too)."""
    found: dict[str, Field] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, dataclasses.Field) and _KEY in value.metadata:
                found[attr] = Field(
                    key=value.metadata[_KEY],
                    attr=attr,
                    owner=klass,
                    type=_annotation(klass, attr),
                    default=value.default,
                    default_factory=value.default_factory,
                    help=value.metadata[_HELP],
                    bounds=value.metadata.get(_BOUNDS, ""),
                )
    if dataclasses.is_dataclass(cls):  # dataclass fields are no longer class attributes
        for f in dataclasses.fields(cls):
            if _KEY in f.metadata:
                owner = next(k for k in cls.__mro__ if f.name in k.__dict__.get("__annotations__", {}))
                found[f.name] = Field(
                    key=f.metadata[_KEY],
                    attr=f.name,
                    owner=owner,
                    type=_annotation(owner, f.name),
                    default=f.default,
                    default_factory=f.default_factory,
                    help=f.metadata[_HELP],
                    bounds=f.metadata.get(_BOUNDS, ""),
                )
    return list(found.values())


def collect(components: Iterable[type]) -> dict[str, Field]:
    """All fields of `components` and, recursively, of their own `components()`.

    The same key declared by two classes is one shared value (e.g. `architecture/block_size`
    read by both the model and the trainer); their types must agree, and at most one
    distinct default may be given.
    """
    table: dict[str, Field] = {}
    seen: set[type] = set()

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for f in fields_of(cls):
            other = table.get(f.key)
            if other is None or (other.required and not f.required):
                if other is not None and other.type != f.type:
                    raise ConfigError(_conflict(f, other, "types"))
                table[f.key] = f
            elif other.type != f.type:
                raise ConfigError(_conflict(f, other, "types"))
            elif not f.required and f.default_value() != other.default_value():
                raise ConfigError(_conflict(f, other, "defaults"))
        sub = getattr(cls, "components", None)
        if callable(sub):
            for child in sub():
                visit(child)

    for component in components:
        visit(component)
    return table


def _conflict(a: Field, b: Field, what: str) -> str:
    return (
        f"config key '{a.key}' is declared by {a.owner.__name__}.{a.attr} and "
        f"{b.owner.__name__}.{b.attr} with different {what}"
    )


# ----------------------------------------------------------------------------- values


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp`, or a ConfigError naming `key`.

    Lenient only where YAML or the shell are ambiguous: `2e6` (a string in YAML 1.1)
    is a number, an integral float is an int, an int is a float.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        exact = [a for a in args if a is type(value)]
        for candidate in exact + [a for a in args if a not in exact and a is not type(None)]:
            try:
                return coerce(value, candidate, key)
            except ConfigError:
                continue
        raise _wrong(value, tp, key)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _wrong(value, tp, key)
        return dict(value)
    return _coerce_scalar(value, tp, key)


def _coerce_sequence(value: Any, tp: Any, key: str) -> list | tuple:
    """A list or tuple of `tp`'s item types (a fixed-length tuple item by item)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _wrong(value, tp, key)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _wrong(value, tp, key)
        items = [coerce(v, a, key) for v, a in zip(value, args)]
    else:
        items = [coerce(v, args[0], key) for v in value] if args else list(value)
    return tuple(items) if (origin or tp) is tuple else items


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """An enum member, bool, int, float, str or instance of the class `tp`."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' must be one of {[m.value for m in tp]}, got {value!r}") from None
    if tp in (int, float):
        number = _number(value)
        if number is not None and (tp is float or float(number).is_integer()):
            return tp(number)
    elif isinstance(tp, type) and isinstance(value, tp):  # bool, str or any other class
        return value
    raise _wrong(value, tp, key)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _wrong(value: Any, tp: Any, key: str) -> ConfigError:
    return ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def did_you_mean(name: str, known: Iterable[str], *, cutoff: float = 0.6, by_last_part: bool = False) -> str:
    """A hint naming the known names closest to a mistyped `name` (the best, if at least
    `cutoff` alike, and up to two about as close), or "" when none is close.

    Args:
        by_last_part: also compare the parts after the last `/` (a misspelt last part of a
            config key is the common case); a job key's last part is shared by every family.
    """

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, name, candidate).ratio()
        if not by_last_part:
            return whole
        return max(whole, difflib.SequenceMatcher(None, name.rsplit("/", 1)[-1], candidate.rsplit("/", 1)[-1]).ratio())

    scored = sorted(((score(k), k) for k in known), reverse=True)
    if not scored or scored[0][0] < cutoff:
        return ""
    close = [k for s, k in scored[:3] if s >= scored[0][0] - 0.02]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a/b": 1}`."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, key + "/"))
        else:
            flat[key] = value
    return flat


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a/b": 1}` -> `{"a": {"b": 1}}`."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def defaults(table: Mapping[str, Field]) -> dict[str, Any]:
    """Every key with its default, `???` for required ones."""
    return {key: MISSING_MARK if f.required else _plain(f.default_value()) for key, f in table.items()}


def _plain(value: Any) -> Any:
    """A value as YAML can write it (enums by value, tuples as lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """`["training.tokens=2e6"]` -> `{"training/tokens": "2e6"}`; a key given twice is an error."""
    parsed: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. training.tokens=2e6)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-").replace(".", "/")
        if key in parsed:
            raise ConfigError(f"config key '{key}' is overridden twice")
        parsed[key] = raw
    return parsed


def _parse_raw(raw: Any, tp: Any) -> Any:
    """A command-line string as the value YAML would give, kept a string for `str` fields."""
    if not isinstance(raw, str) or tp is str:
        return raw
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def resolve(
    table: Mapping[str, Field],
    values: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    allowed_extra: Iterable[str] = (),
    require: bool = True,
) -> dict[str, Any]:
    """Validate flat `values` (from a YAML) plus `overrides` (from the command line).

    Keys missing from `values` take their defaults; unknown keys, wrong types and (when
    `require`) values left at `???` raise ConfigError naming the key.
    """
    values = dict(values or {})
    extra = set(allowed_extra)
    for key in list(values) + list(overrides or {}):
        if key not in table and key not in extra:
            raise ConfigError(f"unknown config key '{key}'{did_you_mean(key, table, by_last_part=True)}")
    for key, raw in (overrides or {}).items():
        values[key] = _parse_raw(raw, table[key].type) if key in table else raw
    resolved: dict[str, Any] = {}
    for key, f in table.items():
        value = values[key] if key in values else (MISSING_MARK if f.required else f.default_value())
        if value == MISSING_MARK:
            if require:
                raise ConfigError(f"config key '{key}' is required but not set (it is {MISSING_MARK})")
            resolved[key] = value
            continue
        resolved[key] = check_bounds(f, coerce(value, f.type, key))
    for key in extra:
        if key in values:
            resolved[key] = values[key]
    return resolved


def build(cls: type, values: Mapping[str, Any], **extra: Any) -> Any:
    """An instance of `cls` from resolved flat `values` (its fields passed by attribute name)."""
    kwargs = {f.attr: values[f.key] for f in fields_of(cls) if f.key in values}
    return cls(**kwargs, **extra)


# ----------------------------------------------------------------------------- YAML files


def dump_yaml(flat: Mapping[str, Any], table: Mapping[str, Field] | None = None, header: str = "") -> str:
    """The nested YAML for flat `values`, each key commented with its field's help."""
    lines = [f"# {line}" for line in header.splitlines()]

    def emit(node: Mapping[str, Any], indent: int, prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            pad = "  " * indent
            if isinstance(value, Mapping) and value:
                lines.append(f"{pad}{name}:")
                emit(value, indent + 1, key + "/")
                continue
            text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            help_text = table[key].help if table and key in table else ""
            lines.append(f"{pad}{name}: {text}" + (f"  # {help_text}" if help_text else ""))

    emit(nest(flat), 0, "")
    return "\n".join(lines) + "\n"


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config file as flat `{key: value}`; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(tree).__name__}")
    return flatten(tree)


def write_atomic(path: str | os.PathLike, text: str | bytes) -> None:
    """Write `path` through a temporary file and a rename, so it is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(text, bytes) else "w"
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:  # a full disk, say: no temporary file left behind either
            with contextlib.suppress(OSError):
                tmp.close()  # flushes what is left, and fails again
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
