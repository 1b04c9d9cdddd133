"""The command line as a user meets it: jobs, configure, run, and every kind of bad input."""

import json
import os
import subprocess
import sys

import pytest
import yaml

TINY = [
    "architecture.n_layer=1",
    "architecture.n_embd=32",
    "architecture.n_head=2",
    "architecture.block_size=32",
    "training.batch_size=8",
    "training.tokens=2560",
    "logging.validation_interval=5",
    "logging.validation_batches=2",
    "logging.checkpoint_interval=5",
    "logging.log_interval=2",
    "logging.progress_bar=false",
]


def snapshot(path):
    """Every file under `path` with its bytes, to prove nothing was created or changed."""
    return {
        os.path.relpath(os.path.join(root, name), path): open(os.path.join(root, name), "rb").read()
        for root, _, files in os.walk(path)
        for name in files
    }


def test_jobs_lists_keys_with_summaries(theseus_cli):
    result = theseus_cli("jobs", check=True)
    line = next(text for text in result.stdout.splitlines() if text.startswith("gpt/train/pretrain"))
    assert "Pretrain a GPT from scratch" in line


def test_configure_writes_every_field(theseus_cli, tmp_path):
    out = tmp_path / "gpt.yaml"
    theseus_cli("configure", "gpt/train/pretrain", out, "training.tokens=200000", check=True)
    tree = yaml.safe_load(out.read_text())
    assert tree["job"] == "gpt/train/pretrain"
    assert tree["training"]["tokens"] == 200000
    assert tree["architecture"]["n_embd"] == 128 and tree["optimization"]["decay_shape"] == "1-sqrt"
    assert "# residual width" in out.read_text()


LISTING = """
import sys
from theseus.cli import main
main(sys.argv[1:])
from theseus.base.backend import KERAS_EXTRAS
print(sorted(name for name in (*KERAS_EXTRAS, "tensorflow", "torch", "keras_hub", "transformers") if name in sys.modules))
"""


def test_listing_and_configuring_import_keras_without_its_extras_and_write_the_same_yaml(tmp_path):
    """`jobs` and `configure`, when they build the job catalog (`theseus.cli.catalog`), load Keras without
    what it imports only when installed; the YAML equals the one written with all of Keras loaded."""
    import keras  # noqa: F401  (this process: the full import)

    from theseus.experiments import JOBS, runs

    env = {**os.environ, "THESEUS_CACHE": str(tmp_path / "cache")}  # no catalog yet: built from the classes
    jobs = subprocess.run([sys.executable, "-c", LISTING, "jobs"], env=env, capture_output=True, text=True, check=True)
    *listing, imported = jobs.stdout.splitlines()
    assert [line.split()[0] for line in listing] == sorted(JOBS) and imported == "[]"
    lean = tmp_path / "lean.yaml"
    configure = [sys.executable, "-c", LISTING, "configure", "gpt/train/pretrain", str(lean), "training.tokens=4096"]
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # built again, by configure
    assert (
        subprocess.run(configure, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1] == "[]"
    )
    fields, values = runs.configure("gpt/train/pretrain", {"training/tokens": 4096})
    assert lean.read_text() == runs.config_text("gpt/train/pretrain", fields, values)


@pytest.mark.slow
def test_configure_then_run_trains_and_writes_the_run_folder(theseus_cli, tmp_path):
    config = tmp_path / "gpt.yaml"
    theseus_cli("configure", "gpt/train/pretrain", config, *TINY, check=True)
    result = theseus_cli("run", "dev", config, tmp_path / "runs", check=True)
    run = tmp_path / "runs" / "dev"
    assert f"run folder: {run}" in result.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["tokens"] == 2560
    rows = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "val_loss" in rows[0]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10]
    assert all({"step", "tokens", "loss", "lr"} <= set(r) for r in train_rows)
    assert train_rows[-1]["tokens"] == 10 * 8 * 32
    assert (run / "checkpoints" / "step_00000010" / "model.weights.h5").is_file()
    # the same command again finds the run complete and does not train
    again = theseus_cli("run", "dev", config, tmp_path / "runs", check=True)
    assert "already complete at step 10" in again.stdout


BAD = [
    (("run", "dev", "{tmp}/nope.yaml", "{tmp}/runs"), "config file not found: {tmp}/nope.yaml"),
    (
        ("configure", "gpt/train/pretrian", "{tmp}/x.yaml"),
        "unknown job 'gpt/train/pretrian' (did you mean 'gpt/train/pretrain'?); `theseus jobs` lists them",
    ),
    (
        ("configure", "gpt/train/pretrain", "{tmp}/x.yaml", "training.tokns=5"),
        "unknown config key 'training/tokns' (did you mean 'training/tokens'?)",
    ),
    (
        ("configure", "gpt/train/pretrain", "{tmp}/x.yaml", "training.tokens=lots"),
        "config key 'training/tokens' must be int, got 'lots' (str)",
    ),
    (
        ("run", "dev", "{tmp}/good.yaml", "{tmp}/runs", "architecture.n_layer=two"),
        "config key 'architecture/n_layer' must be int, got 'two' (str)",
    ),
    (
        ("run", "dev", "{tmp}/required.yaml", "{tmp}/runs"),
        "config key 'architecture/n_embd' is required but not set (it is ???)",
    ),
    (
        ("run", "dev", "{tmp}/unknown.yaml", "{tmp}/runs"),
        "unknown config key 'architecture/n_embed' (did you mean 'architecture/n_embd'?)",
    ),
    (("configure", "gpt/train/pretrain", "{tmp}/good.yaml"), "{tmp}/good.yaml exists; pass --force to overwrite it"),
    (
        ("run", "dev", "{tmp}/good.yaml", "{tmp}/runs", "optimization.warmup=700"),
        "optimization: Arguments `warmup` (700 steps) + `decay` (49 steps) must fit in total_steps=244. Received: warmup=700, decay=0.2, total_steps=244",
    ),
    (
        ("run", "dev", "{tmp}/good.yaml", "{tmp}/runs", "optimization.schedule=wsdd"),
        "optimization: Unknown schedule 'wsdd'. Known schedules: ['constant', 'cosine', 'wsd', 'wsd-s']",
    ),
    (
        ("run", "dev", "{tmp}/good.yaml", "{tmp}/runs", "topology.backend=mxnet"),
        "config key 'topology/backend' must be one of ['jax', 'tensorflow', 'torch'], got 'mxnet'",
    ),
    (
        ("--backend", "torch", "run", "dev", "{tmp}/good.yaml", "{tmp}/runs", "topology.backend=jax"),
        "--backend torch contradicts the override topology/backend=jax",
    ),
]


@pytest.mark.parametrize("args, message", BAD, ids=[b[1].split(" (")[0][:40] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(theseus_cli, tmp_path, args, message):
    theseus_cli("configure", "gpt/train/pretrain", tmp_path / "good.yaml", check=True)
    text = (tmp_path / "good.yaml").read_text()
    (tmp_path / "required.yaml").write_text(text.replace("n_embd: 128", "n_embd: ???"))
    (tmp_path / "unknown.yaml").write_text(text.replace("n_embd: 128", "n_embed: 128"))
    before = snapshot(tmp_path)
    result = theseus_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"theseus: error: {message.format(tmp=tmp_path)}"], result.stderr
    assert snapshot(tmp_path) == before


def test_unknown_job_in_the_recipe_runner(recipe, tmp_path):
    result = recipe("gpt/train/pretrane", "--out", tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "theseus: error: unknown job 'gpt/train/pretrane' (did you mean 'gpt/train/pretrain'?); `theseus jobs` lists them"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_changed_config_does_not_resume_an_existing_run(theseus_cli, tmp_path):
    config = tmp_path / "gpt.yaml"
    theseus_cli("configure", "gpt/train/pretrain", config, *TINY, check=True)
    run = tmp_path / "runs" / "dev"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config.read_text().replace("n_embd: 32", "n_embd: 64"))
    before = snapshot(tmp_path)
    result = theseus_cli("run", "dev", config, tmp_path / "runs")
    assert result.returncode == 2
    assert "already holds a run with a different config (architecture/n_embd)" in result.stderr
    assert snapshot(tmp_path) == before


QUIET = [
    *TINY[:5],
    "training.tokens=512",
    "logging.validation_batches=1",
    "logging.progress_bar=false",
    "logging.plot=false",
]
"""The default job, two steps of 8 x 32 tokens, on the 8 devices tests/conftest.py makes."""


@pytest.mark.slow
def test_the_default_job_starts_quietly_and_names_its_mesh(tmp_path):
    """No framework's start-up lines on stderr (TensorFlow's, imported by Keras on JAX too, print
    "Could not find cuda drivers" twice here), with the environment a user has (no TF_CPP_MIN_LOG_LEVEL)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "theseus.recipes", "gpt/train/pretrain", "--out", str(tmp_path)]
    command += [f"--{item}" for item in QUIET]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert "(256 tokens each) on jax, 8 devices: batch 8, dp\n" in result.stdout


@pytest.mark.slow
def test_verbose_is_accepted_and_the_start_line_names_a_tensor_parallel_mesh(theseus_cli, tmp_path):
    config = tmp_path / "gpt.yaml"
    tp = ["topology.strategy=tp", "topology.shard=4"]
    theseus_cli("--verbose", "configure", "gpt/train/pretrain", config, *QUIET, *tp, check=True)
    result = theseus_cli("--verbose", "run", "dev", config, tmp_path / "runs", check=True)
    assert "(256 tokens each) on jax, 8 devices: batch 2 × shard 4, tp\n" in result.stdout
