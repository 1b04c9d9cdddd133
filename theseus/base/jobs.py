"""What the job registry is made of that can be read without importing a job, and so Keras:
the modules that add users' jobs, a job's config file text, and the line refusing an unknown job.

`theseus.experiments.runs` uses them with the live registry (`JOBS` and the plugins' jobs),
`theseus.cli.catalog` with its copy of the registry as data, which lists and configures jobs
without importing a deep-learning framework.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from theseus.config import ConfigError, Field, did_you_mean, dump_yaml

JOB_KEY = "job"
"""The config file's top-level key naming its job."""

PLUGINS_ENV = "THESEUS_PLUGINS"
PLUGIN_GROUP = "theseus.plugins"


def plugin_modules() -> list[str]:
    """The modules that register users' jobs: those named in `THESEUS_PLUGINS` (comma-separated),
    then those of the `theseus.plugins` entry points."""
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    return names + [ep.value for ep in entry_points(group=PLUGIN_GROUP)]


def config_text(key: str, fields: Mapping[str, Field], values: Mapping[str, Any]) -> str:
    """Job `key`'s config file: its `job:` line and every section, each key with its help."""
    header = f"theseus config for job {key}; `???` marks a value you must set."
    return dump_yaml({JOB_KEY: key, **values}, fields, header=header)


def unknown_job(key: str, known: Iterable[str]) -> ConfigError:
    """The error for a job key that is not among the `known` ones, naming the closest."""
    hint = did_you_mean(key, known, cutoff=0.4)
    return ConfigError(f"unknown job '{key}'{hint}; `theseus jobs` lists them")
