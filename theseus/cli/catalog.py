"""The job catalog: the job registry as data, so that `theseus jobs` and `theseus configure`
import no deep-learning framework.

The registry (`theseus.experiments.JOBS` and the plugins' jobs) holds classes, and a job's
config keys are the `field`s of those classes and of the model, a Keras layer: listing or
configuring jobs from them imports Keras and JAX, seconds before any work. The catalog holds
what those two commands read: each job's key and summary, and its config table (each key's
attribute, type, default, help and bounds). It is built from the live registry on first use and
kept as JSON in `cache_dir()/catalog/jobs-BACKEND.json` (`$THESEUS_CACHE`, else ~/.cache/theseus;
deleting the folder is always safe). It is built again, never trusted, when anything it was
built from may have changed (`fingerprint`: theseus's version and files, the plugin modules'
files, the Python, Keras and keras-hub versions, the backend), or when the file cannot be read
back whole. A job whose table cannot be written as data exactly (a type beyond `int`, `float`,
`str`, `bool`, `None`, `Any`, lists, tuples, dicts, unions, `Literal` and plain enums) is
configured from the live registry; so is every job in a process that has loaded the registry.
The values are validated by the same `resolve` either way, so output and errors are the same.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.util
import json
import operator
import os
import sys
import types
import typing
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import theseus
from theseus.base.jobs import plugin_modules, unknown_job
from theseus.config import Field, defaults, resolve, write_atomic
from theseus.data.storage import cache_dir

FORMAT = 1
"""The catalog file's layout; a file of another layout is rebuilt."""

PACKAGES = ("keras", "keras-hub")
"""Installed packages whose versions a catalog is built against."""

_SCALARS = {tp.__name__: tp for tp in (int, float, str, bool, list, tuple, dict, type(None))}


def path() -> Path:
    """The catalog file for the backend this process runs on."""
    return cache_dir() / "catalog" / f"jobs-{os.environ.get('KERAS_BACKEND', 'jax')}.json"


# ----------------------------------------------------------------------------- what it depends on


def files(root: str | os.PathLike) -> list[list]:
    """Every `*.py` under `root` (or `root` itself, a file) as [path, size, mtime in ns]."""
    root = Path(root)
    found = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in found if p.is_file()]


def module_files(name: str) -> list[list] | None:
    """The files a plugin module may be loaded from: its top-level package's, or its own
    file; None when it is not found (found without importing it)."""
    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or [spec.origin]
    return [entry for root in roots if root for entry in files(root)]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def fingerprint() -> str:
    """A digest of everything the catalog is built from; a catalog with another is rebuilt."""
    inputs = {
        "format": FORMAT,
        "python": sys.version,
        "theseus": [theseus.__version__, files(Path(theseus.__file__).parent)],
        "backend": os.environ.get("KERAS_BACKEND", "jax"),
        "packages": {package: _version(package) for package in PACKAGES},
        "plugins": [[name, module_files(name)] for name in plugin_modules()],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- types as data


def encode_type(tp: Any) -> Any:
    """A field's type as JSON data (`decode_type` reads it back), or TypeError when it has none."""
    if tp is Any:
        return "Any"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _encode_enum(tp)
    if isinstance(tp, type) and _SCALARS.get(tp.__name__) is tp:
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return {"literal": list(args)}
    if origin is types.UnionType or origin is typing.Union:
        return {"|" if origin is types.UnionType else "Union": [encode_type(a) for a in args]}
    if type(tp) is types.GenericAlias and origin in (list, tuple, dict):
        return {"of": origin.__name__, "args": ["..." if a is Ellipsis else encode_type(a) for a in args]}
    raise TypeError(f"no data for the type {tp!r}")


def _encode_enum(tp: type[enum.Enum]) -> dict:
    """A plain enum (found by value, maybe a str or int enum) as its name and members."""
    if getattr(tp._missing_, "__func__", None) is not enum.Enum._missing_.__func__:
        raise TypeError(f"{tp!r} finds its members its own way")
    mixin = next((t.__name__ for t in (str, int) if issubclass(tp, t)), None)
    members = [[m.name, m.value] for m in tp]
    return {"enum": tp.__qualname__, "module": tp.__module__, "mixin": mixin, "members": members}


def decode_type(spec: Any) -> Any:
    """The type `encode_type` wrote as `spec` (an enum as an enum of the same name and members)."""
    if isinstance(spec, str):
        return Any if spec == "Any" else _SCALARS[spec]
    if "literal" in spec:
        return typing.Literal[tuple(spec["literal"])]
    if "|" in spec:
        return functools.reduce(operator.or_, [decode_type(a) for a in spec["|"]])
    if "Union" in spec:
        return typing.Union[tuple(decode_type(a) for a in spec["Union"])]  # noqa: UP007 (kept as written)
    if "of" in spec:
        return _SCALARS[spec["of"]][tuple(... if a == "..." else decode_type(a) for a in spec["args"])]
    name, mixin = spec["enum"], _SCALARS.get(spec["mixin"] or "")
    members = [(member, value) for member, value in spec["members"]]
    return enum.Enum(name.rsplit(".", 1)[-1], members, module=spec["module"], qualname=name, type=mixin)


def _has_enum(tp: Any) -> bool:
    return (isinstance(tp, type) and issubclass(tp, enum.Enum)) or any(map(_has_enum, typing.get_args(tp)))


# ----------------------------------------------------------------------------- fields as data


def record(f: Field, default: Any) -> dict:
    """A field as JSON data; `default` is its value as the config file writes it."""
    data = {"key": f.key, "attr": f.attr, "type": encode_type(f.type), "help": f.help, "bounds": f.bounds}
    return data if f.required else {**data, "default": default}


def field_of(data: Mapping[str, Any]) -> Field:
    """The field a `record` describes (its owner unknown: `object`)."""
    default = data["default"] if "default" in data else dataclasses.MISSING
    fields = ("key", "attr", "help", "bounds")
    strings = {name: data[name] for name in fields if isinstance(data[name], str)}
    if len(strings) < len(fields):
        raise TypeError(f"a field record of the wrong shape: {data!r}")
    return Field(
        owner=object, type=decode_type(data["type"]), default=default, default_factory=dataclasses.MISSING, **strings
    )


def _as_data(values: Mapping[str, Any]) -> str:
    """Config values as JSON text (enums by value, 1 apart from 1.0): equal texts, equal config files."""
    return json.dumps(list(values.items()), default=lambda v: v.value if isinstance(v, enum.Enum) else repr(v))


def records(table: Mapping[str, Field]) -> list[dict] | None:
    """A job's table as field records that read back to the same keys, helps, types (so the same
    validation) and values, or None when some part of it does not."""
    try:
        data = json.loads(json.dumps([record(f, d) for f, d in zip(table.values(), defaults(table).values())]))
        back = {f.key: f for f in map(field_of, data)}
        same_types = all(
            str(back[k].type) == str(f.type) and (back[k].type == f.type or _has_enum(f.type)) for k, f in table.items()
        )
        live, read = (_as_data(resolve(t, require=False)) for t in (table, back))
    except Exception:  # a type or default with no data, a default that does not validate: the live path
        return None
    return data if same_types and list(back) == list(table) and live == read else None


# ----------------------------------------------------------------------------- the catalog


class Catalog:
    """Jobs as data: `listing` (key -> summary) and each job's config table (`table`)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.fields = [field_of(item) for item in data["fields"]]
        self.jobs: dict[str, dict] = dict(data["jobs"])
        self.listing = {key: job["summary"] for key, job in self.jobs.items()}
        if not all(isinstance(s, str) for s in self.listing.values()):
            raise TypeError("a job summary that is not text")
        for job in self.jobs.values():
            if job["fields"] is not None and not all(
                type(i) is int and 0 <= i < len(self.fields) for i in job["fields"]
            ):
                raise TypeError("a job table naming a field the catalog does not hold")

    def table(self, key: str) -> dict[str, Field] | None:
        """Job `key`'s config table, or None when only the live registry has it."""
        indices = self.jobs[key]["fields"]
        return None if indices is None else {self.fields[i].key: self.fields[i] for i in indices}


def build() -> dict[str, Any]:
    """The catalog's data, from the live registry (which this imports, with Keras)."""
    runs = _live_runs()
    unique: dict[str, int] = {}
    fields: list[dict] = []
    jobs: dict[str, dict] = {}
    for key, cls in runs.jobs().items():
        data = records(runs.table(cls))
        for item in data or []:  # each distinct field once: jobs share most of theirs
            if unique.setdefault(json.dumps(item, sort_keys=True), len(fields)) == len(fields):
                fields.append(item)
        indices = None if data is None else [unique[json.dumps(item, sort_keys=True)] for item in data]
        jobs[key] = {"summary": runs.summary(cls), "fields": indices}
    return {"format": FORMAT, "fields": fields, "jobs": jobs}


def load() -> Catalog:
    """The catalog, read from its file when that was built from what is here now, else built
    (and written, when the cache folder can be written)."""
    target, stamp = path(), fingerprint()
    try:
        data = json.loads(target.read_text())
        if data["format"] == FORMAT and data["fingerprint"] == stamp:
            return Catalog(data)
    except Exception:  # no file, a corrupt or foreign one: build it again
        pass
    data = {**build(), "fingerprint": stamp}  # the fingerprint from before the build: a change meanwhile shows
    try:
        write_atomic(target, json.dumps(data))
    except OSError:  # a read-only cache: the catalog is simply not kept
        pass
    return Catalog(data)


def _live_runs() -> types.ModuleType:
    """`theseus.experiments.runs`, imported with a lean Keras (`import_keras_lean`)."""
    from theseus.base import backend

    backend.import_keras_lean()
    from theseus.experiments import runs

    return runs


def _registry_loaded() -> bool:
    """Whether this process has the live registry already (its jobs may not be in any catalog)."""
    return "theseus.experiments" in sys.modules


def listing() -> dict[str, str]:
    """Every job's key and summary (`theseus jobs`)."""
    if _registry_loaded():
        runs = _live_runs()
        return {key: runs.summary(cls) for key, cls in runs.jobs().items()}
    return load().listing


def configure(key: str, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Field], dict[str, Any]]:
    """Job `key`'s config table and values, defaults plus `overrides`, validated (`???` allowed),
    as `theseus.experiments.runs.configure` gives them."""
    if not _registry_loaded():
        catalog = load()
        if key not in catalog.jobs:
            raise unknown_job(key, catalog.jobs)
        table = catalog.table(key)
        if table is not None:
            return table, resolve(table, {}, overrides, require=False)
    return _live_runs().configure(key, overrides)
