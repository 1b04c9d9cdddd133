"""The job catalog (`theseus.cli.catalog`): `theseus jobs` and `configure` read the registry as
data, give what the live registry gives, and never trust a stale or broken file."""

import ast
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import typing

import pytest

import theseus
from theseus.base.jobs import config_text
from theseus.cli import catalog
from theseus.config import ConfigError, field
from theseus.experiments import JOBS, runs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty catalog cache, read as a command-line process reads it (the registry not loaded)."""
    monkeypatch.setenv("THESEUS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "_registry_loaded", lambda: False)
    return tmp_path / "cache"


def outcome(configure, key, overrides):
    """The config file `configure` gives for job `key`, or its error's line."""
    try:
        fields, values = configure(key, dict(overrides))
        return config_text(key, fields, values)
    except ConfigError as error:
        return f"error: {error}"


def probes():
    """One job and key for each kind of field (type and bounds) in the registry."""
    kinds = {}
    for key, cls in sorted(JOBS.items()):
        for f in runs.table(cls).values():
            kinds.setdefault((str(f.type), f.bounds), (key, f.key))
    return list(kinds.values())


RAW = ["lots", "-1", "0", "0.5", "2e6", "true", "null", "[1, 2]", "{a: 1}", "tp", "bfloat16", ""]


def test_every_job_lists_and_configures_from_the_catalog_as_from_the_live_registry(cache, monkeypatch):
    monkeypatch.setattr(catalog, "fingerprint", lambda: "what-the-catalog-is-built-from")
    catalog.load()  # built and written
    monkeypatch.setattr(catalog, "build", lambda: pytest.fail("a fresh catalog was built again"))
    read = catalog.load()
    monkeypatch.setattr(catalog, "load", lambda: read)  # read once, as one command does
    assert catalog.listing() == {key: runs.summary(cls) for key, cls in runs.jobs().items()}
    for key in JOBS:
        assert read.table(key) is not None, key
        assert outcome(catalog.configure, key, {}) == outcome(runs.configure, key, {}), key
    cases = [(job, {name: raw}) for job, name in probes() for raw in RAW]
    cases += [("gpt/train/pretrain", {"training/tokns": "5"}), ("gpt/train/pretrian", {})]
    for job, overrides in cases:
        assert outcome(catalog.configure, job, overrides) == outcome(runs.configure, job, overrides), (job, overrides)
    errors = " ".join(outcome(catalog.configure, job, overrides) for job, overrides in cases)
    for kind in (
        "must be int, got 'lots'",
        "must be one of",
        "must be >= ",
        "must be in [",
        "unknown config",
        "unknown job",
    ):
        assert kind in errors  # the comparison met every kind of refusal


@dataclasses.dataclass
class Odd:
    sizes: typing.List[int] = field("odd/sizes", default_factory=lambda: [1], help="a typing.List, not list")  # noqa: UP006


class OddJob:
    """A job with a type the catalog does not write."""

    @classmethod
    def components(cls):
        return [Odd]


def test_a_job_whose_table_is_not_data_is_configured_from_the_live_registry(cache, monkeypatch):
    monkeypatch.setitem(JOBS, "test/odd", OddJob)
    read = catalog.load()
    assert read.table("test/odd") is None and read.table("gpt/train/pretrain") is not None
    assert read.listing["test/odd"] == "A job with a type the catalog does not write."
    for overrides in ({}, {"odd/sizes": "[3, 4]"}, {"odd/sizes": "lots"}):
        assert outcome(catalog.configure, "test/odd", overrides) == outcome(runs.configure, "test/odd", overrides)


def good_file():
    """The catalog file, as read back: its data, with the fingerprint of what is here now."""
    data = json.loads(catalog.path().read_text())
    assert data["fingerprint"] == catalog.fingerprint()
    return data


@pytest.mark.parametrize(
    "damage",
    [
        lambda text, data: text[: len(text) // 2],  # cut short
        lambda text, data: "\0" * 64,
        lambda text, data: json.dumps({**data, "fields": [{"key": 1}]}),  # well-formed JSON, wrong shape
        lambda text, data: json.dumps({**data, "fields": data["fields"][:3]}),  # tables naming missing fields
        lambda text, data: json.dumps({**data, "jobs": {"gpt/train/pretrain": {"summary": None, "fields": None}}}),
        lambda text, data: text.replace('"fields": [0, ', '"fields": [0.0, '),
    ],
    ids=["truncated", "binary", "bad-field", "missing-fields", "bad-summary", "float-index"],
)
def test_a_corrupt_catalog_is_built_again_never_an_error(cache, damage):
    catalog.load()
    text = catalog.path().read_text()
    damaged = damage(text, json.loads(text))
    assert damaged != text
    catalog.path().write_text(damaged)
    assert catalog.load().listing == catalog.listing() == {key: runs.summary(cls) for key, cls in JOBS.items()}
    assert good_file()["jobs"] == json.loads(text)["jobs"]


def test_a_change_to_what_the_catalog_is_built_from_builds_it_again(cache, tmp_path, monkeypatch):
    built = []
    build = catalog.build
    monkeypatch.setattr(catalog, "build", lambda: built.append(1) or build())
    catalog.load(), catalog.load()
    assert len(built) == 1
    monkeypatch.setattr(theseus, "__version__", "0.0.0-changed")
    catalog.load()
    assert len(built) == 2
    # a plugin package's files, found without importing it: any file of the package counts
    package = tmp_path / "user_jobs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SIZE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("THESEUS_PLUGINS", "user_jobs.jobs")
    before = catalog.fingerprint()
    assert before == catalog.fingerprint()
    (package / "helpers.py").write_text("SIZE = 10\n")
    assert catalog.fingerprint() != before
    assert "user_jobs" not in sys.modules


ENTRY_POINT_PLUGIN = '''
from theseus.experiments import JOBS


class PretrainToy(JOBS["gpt/train/pretrain"]):
    """{summary}"""


JOBS["toy/train/pretrain"] = PretrainToy
'''

COMMAND = """
import sys
{preload}
from theseus.cli import main
main(sys.argv[1:])
print(sorted(name for name in ("jax", "keras", "tensorflow", "torch") if name in sys.modules))
"""


def cli(args, env, preload=""):
    """`theseus ARGS` in a fresh process: its output lines, and the frameworks it imported."""
    command = [sys.executable, "-c", COMMAND.format(preload=preload), *map(str, args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600)
    *lines, imported = result.stdout.splitlines()
    return lines, ast.literal_eval(imported)


def summary(lines, key):
    """The summary `theseus jobs` printed for job `key`."""
    return next(line.split(None, 1)[1] for line in lines if line.split()[0] == key)


def test_a_warm_catalog_imports_no_framework_and_lists_an_entry_point_plugin(tmp_path):
    """A plugin installed with a `theseus.plugins` entry point, as pip would leave it."""
    info = tmp_path / "theseus_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: theseus-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[theseus.plugins]\ntoy = toy_jobs\n")
    plugin = tmp_path / "toy_jobs.py"
    plugin.write_text(textwrap.dedent(ENTRY_POINT_PLUGIN.format(summary="Pretrain a toy GPT.")))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "THESEUS_CACHE": str(tmp_path / "cache")}
    cold, imported = cli(["jobs"], env)
    assert "keras" in imported and summary(cold, "toy/train/pretrain") == "Pretrain a toy GPT."
    warm, imported = cli(["jobs"], env)
    assert warm == cold and imported == []
    config = ["configure", "toy/train/pretrain", tmp_path / "toy.yaml", "training.tokens=4096", "--force"]
    assert cli(config, env) == ([f"wrote {tmp_path / 'toy.yaml'}"], [])
    warm_text = (tmp_path / "toy.yaml").read_text()
    cli(config, env, preload="import theseus.experiments")  # the live registry: no catalog
    assert (tmp_path / "toy.yaml").read_text() == warm_text and "tokens: 4096" in warm_text
    plugin.write_text(textwrap.dedent(ENTRY_POINT_PLUGIN.format(summary="Pretrain a smaller toy GPT.")))
    changed, imported = cli(["jobs"], env)
    assert summary(changed, "toy/train/pretrain") == "Pretrain a smaller toy GPT." and "keras" in imported
