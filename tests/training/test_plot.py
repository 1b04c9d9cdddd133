import json

import pytest
from matplotlib.image import imread

from theseus.config import ConfigError
from theseus.training.plot import plot_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_draws_loss_val_loss_and_lr(tmp_path):
    rows = [{"step": 0, "tokens": 0, "val_loss": 5.5}]
    rows += [{"step": s, "tokens": 64 * s, "loss": 5.0 - 0.1 * s, "lr": min(s, 5) * 1e-3} for s in range(1, 21)]
    rows += [{"step": 20, "tokens": 1280, "val_loss": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plot_run(tmp_path)
    assert path == tmp_path / "metrics.png"
    image = imread(path)
    assert image.shape[:2] == (600, 800)  # 8 x 6 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # something was drawn
    assert not list(tmp_path.glob(".metrics.png*"))


def test_a_folder_without_metrics_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is not a run folder: it has no metrics.jsonl"):
        plot_run(tmp_path)


def test_theseus_plot_on_a_folder_that_is_not_a_run(theseus_cli, tmp_path):
    result = theseus_cli("plot", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"theseus: error: {tmp_path} is not a run folder: it has no metrics.jsonl"
    ]


@pytest.mark.slow
def test_the_default_job_leaves_a_plot_and_full_metrics_rows(recipe, theseus_cli, tmp_path):
    # the default job, shortened to 6 steps of its default model, data and batch
    result = recipe(
        "gpt/train/pretrain",
        "--out",
        tmp_path,
        "--training.tokens=24576",
        "--logging.log_interval=2",
        "--logging.validation_interval=3",
        "--logging.validation_batches=2",
        "--logging.progress_bar=false",
        "--topology.devices=1",  # one CPU device, as on a laptop (the tests fake eight)
        check=True,
    )
    run_dir = tmp_path / "gpt-train-pretrain"
    assert f"run folder: {run_dir}" in result.stdout
    assert (run_dir / "metrics.png").read_bytes()[:8] == PNG
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    fields = {"step", "tokens", "loss", "lr", "grad_norm", "update_norm", "tokens_per_sec", "mfu"}
    assert all(fields <= set(r) for r in train_rows), train_rows
    assert all(r["tokens_per_sec"] > 0 and 0 < r["mfu"] for r in train_rows)  # MFU against a measured peak
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 3, 6]

    (run_dir / "metrics.png").unlink()
    again = theseus_cli("plot", run_dir, check=True)
    assert again.stdout.strip() == f"wrote {run_dir / 'metrics.png'}"
    assert (run_dir / "metrics.png").read_bytes()[:8] == PNG
