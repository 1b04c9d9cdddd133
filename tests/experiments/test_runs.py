import pytest
import yaml

from theseus import cli
from theseus.experiments import runs

TINY = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * 2,
    "logging/validation_batches": 2,
    "logging/progress_bar": False,
    "logging/peak_flops": 1e12,
    "logging/plot": False,
    "topology/devices": 1,
}


def config_file(path, **overrides):
    fields, values = runs.configure("gpt/train/pretrain", {**TINY, **overrides}, require=True)
    path.write_text(runs.config_text("gpt/train/pretrain", fields, values))
    return path


@pytest.mark.slow
def test_fresh_sets_the_old_run_aside_and_starts_over(tmp_path, capsys):
    first = config_file(tmp_path / "first.yaml")
    assert cli.main(["run", "dev", str(first), str(tmp_path / "runs")]) == 0
    old = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "dev").rglob("*") if p.is_file()}

    changed = config_file(tmp_path / "changed.yaml", **{"architecture/n_embd": 64})
    assert cli.main(["run", "dev", str(changed), str(tmp_path / "runs")]) == 2  # refused: resuming would be wrong
    assert "pass --fresh to start over" in capsys.readouterr().err

    assert cli.main(["run", "dev", str(changed), str(tmp_path / "runs"), "--fresh"]) == 0
    (aside,) = (tmp_path / "runs").glob("dev.old-*")
    assert f"moved the previous run to {aside}" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in aside.rglob("*") if p.is_file()} == old  # kept as it was
    assert yaml.safe_load((tmp_path / "runs" / "dev" / "config.yaml").read_text())["architecture"]["n_embd"] == 64
    assert (tmp_path / "runs" / "dev" / "checkpoints" / "step_00000002").is_dir()
