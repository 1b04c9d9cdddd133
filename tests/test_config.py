import dataclasses
import errno
import subprocess
import sys
from typing import Literal

import pytest

from theseus.config import (
    ConfigError,
    build,
    collect,
    dump_yaml,
    field,
    flatten,
    load_yaml,
    nest,
    parse_overrides,
    resolve,
)


@dataclasses.dataclass
class Training:
    tokens: int = field("training/tokens", default=1000, help="how many tokens")
    lr: float = field("optimization/lr", default=1e-3)
    warmup: int | float = field("optimization/warmup", default=0.1)
    shape: Literal["linear", "cosine"] = field("optimization/shape", default="linear")
    name: str = field("data/name", default="embedded")
    model_id: str = field("architecture/huggingface/model")
    layers: list[int] | None = field("architecture/layers", default=None)
    flag: bool = field("training/flag", default=False)


class Model:
    """A non-dataclass component, as `Module` subclasses are."""

    width: int = field("architecture/width", default=64)
    tokens: int = field("training/tokens")  # shared key, required here, default from Training

    def __init__(self, width, tokens):
        self.width, self.tokens = width, tokens

    @classmethod
    def components(cls):
        return [Training]


def test_collect_merges_shared_keys_and_recurses():
    table = collect([Model])
    assert set(table) == {
        "architecture/width",
        "training/tokens",
        "optimization/lr",
        "optimization/warmup",
        "optimization/shape",
        "data/name",
        "architecture/huggingface/model",
        "architecture/layers",
        "training/flag",
    }
    assert table["training/tokens"].default == 1000
    assert table["training/tokens"].help == "how many tokens"
    assert table["architecture/huggingface/model"].required


def test_conflicting_defaults_are_refused():
    class Other:
        tokens: int = field("training/tokens", default=5)

    with pytest.raises(ConfigError, match="training/tokens.*different defaults"):
        collect([Training, Other])


def test_resolve_fills_defaults_and_coerces():
    table = collect([Training])
    values = resolve(
        table, {"architecture/huggingface/model": "x", "training/tokens": "2e6"}, {"optimization/lr": "3e-4"}
    )
    assert values["training/tokens"] == 2_000_000 and isinstance(values["training/tokens"], int)
    assert values["optimization/lr"] == pytest.approx(3e-4)
    assert values["optimization/warmup"] == 0.1
    assert (
        resolve(table, {"architecture/huggingface/model": "x"}, {"optimization/warmup": "100"})["optimization/warmup"]
        == 100
    )
    assert resolve(table, {"architecture/huggingface/model": "x"}, {"architecture/layers": "[1, 2]"})[
        "architecture/layers"
    ] == [1, 2]
    # a str field keeps the command-line text as it is
    assert resolve(table, {"architecture/huggingface/model": "x"}, {"data/name": "123"})["data/name"] == "123"


@pytest.mark.parametrize(
    "values, overrides, message",
    [
        ({"training/tokns": 5}, {}, "unknown config key 'training/tokns' \\(did you mean 'training/tokens'\\?\\)"),
        ({}, {"optimization/lrr": "1"}, "unknown config key 'optimization/lrr'.*did you mean 'optimization/lr'"),
        ({"training/tokens": "many"}, {}, "config key 'training/tokens' must be int, got 'many'"),
        ({"training/tokens": 1.5}, {}, "config key 'training/tokens' must be int"),
        ({"training/flag": "yes"}, {}, "config key 'training/flag' must be bool"),
        ({"optimization/shape": "square"}, {}, "must be one of \\['linear', 'cosine'\\]"),
    ],
)
def test_resolve_errors_name_the_key(values, overrides, message):
    table = collect([Training])
    with pytest.raises(ConfigError, match=message):
        resolve(table, {"architecture/huggingface/model": "m", **values}, overrides)


@pytest.mark.parametrize("values", [{}, {"architecture/huggingface/model": "???"}])
def test_required_values_must_be_set(values):
    with pytest.raises(ConfigError, match="config key 'architecture/huggingface/model' is required but not set"):
        resolve(collect([Training]), values)


def test_overrides_parse_dotted_keys_and_refuse_duplicates():
    assert parse_overrides(["training.tokens=2e6", "optimization/lr=1"]) == {
        "training/tokens": "2e6",
        "optimization/lr": "1",
    }
    with pytest.raises(ConfigError, match="overridden twice"):
        parse_overrides(["training.tokens=1", "training/tokens=2"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["training.tokens"])


def test_yaml_round_trip_with_missing_marks(tmp_path):
    table = collect([Model])
    values = resolve(table, {}, {}, require=False)
    text = dump_yaml(values, table)
    assert "model: ???" in text and "# how many tokens" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    loaded = load_yaml(path)
    assert loaded == {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    assert nest(flatten({"a": {"b": 1, "c": {"d": 2}}})) == {"a": {"b": 1, "c": {"d": 2}}}


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_build_passes_fields_by_attribute():
    table = collect([Model])
    values = resolve(table, {"architecture/huggingface/model": "m"}, {"architecture/width": "32"})
    model = build(Model, values)
    assert (model.width, model.tokens) == (32, 1000)
    training = build(Training, values)
    assert training.model_id == "m" and training.tokens == 1000


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temporary_copy(tmp_path):
    """`write_atomic` under a 10-byte file-size limit (a subprocess: the limit is per process)."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
        "from theseus.config import write_atomic\n"
        "try:\n"
        "    write_atomic(sys.argv[1], 'x' * 100)\n"
        "except OSError as error:\n"
        "    print(error.errno)\n"
    )
    (tmp_path / "kept.yaml").write_text("before\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "kept.yaml")], capture_output=True, text=True)
    assert done.stdout.strip() == str(errno.EFBIG), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.yaml"]
    assert (tmp_path / "kept.yaml").read_text() == "before\n"
