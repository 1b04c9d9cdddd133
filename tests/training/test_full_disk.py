"""A checkpoint that does not fit on the disk: the previous ones stay intact, the run stops with
one line naming the folder and its free space (exit 1), and once there is room again the same
command resumes to the weights and metrics rows of an uninterrupted run."""

import errno
import re
import shutil
import sys
from pathlib import Path

import pytest
from support import run_command
from test_checkpoint import tiny_model
from test_resume import assert_same_checkpoint, assert_same_rows, cli_run, reference, rows  # noqa: F401

from theseus.training import callbacks
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import Checkpointer, DiskFull, MetricsLogger, out_of_space

FULL_DISK_AT = Path(__file__).with_name("full_disk_at.py")
HDF5_EFBIG = (
    "Unable to synchronously write data (file write failed: time = Tue Dec  1 10:00:00 2026, "
    "filename = 'x.h5', file descriptor = 7, errno = 27, error message = 'File too large')"
)


def failing_write(error):
    def save_weights(path):
        path.write_bytes(b"half a weights file")
        raise error

    return save_weights


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        OSError(HDF5_EFBIG),
    ],
)
def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_and_no_temporary_folder(tmp_path, error):
    root = tmp_path / "checkpoints"
    model = tiny_model()
    previous = ckpt.save(root, model, {"step": 4})
    before = {p.name: p.read_bytes() for p in previous.path.iterdir()}
    with pytest.raises(OSError) as raised:
        ckpt.save(root, model, {"step": 8}, save_weights=failing_write(error))
    assert out_of_space(raised.value) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000004"]  # no .tmp_ folder
    assert {p.name: p.read_bytes() for p in previous.path.iterdir()} == before
    ckpt.verify(previous.path)
    assert ckpt.latest(root).step == 4


def test_room_for_the_weights_file_is_checked_before_it_is_written(tmp_path):
    root = tmp_path / "checkpoints"
    model = tiny_model()
    written = ckpt.save(root, model, {"step": 4}).path / ckpt.MODEL_FILE
    assert written.stat().st_size <= ckpt.weights_bytes(model) <= written.stat().st_size + (2 << 20)
    with pytest.raises(OSError) as raised:
        ckpt.check_room(root, shutil.disk_usage(root).free + 1)
    assert raised.value.errno == errno.ENOSPC and str(root) in str(raised.value)
    ckpt.check_room(root, 1)


def test_the_checkpointer_stops_the_run_naming_the_folder_and_its_free_space(tmp_path):
    root = tmp_path / "checkpoints"
    model = tiny_model()
    checkpointer = Checkpointer(root, 4, 128, 0, 12, save_weights=failing_write(OSError(HDF5_EFBIG)))
    checkpointer.set_model(model)
    ckpt.save(root, model, {"step": 4})
    checkpointer.step = 8
    with pytest.raises(DiskFull) as raised:
        checkpointer.save()
    message = str(raised.value)
    assert message.startswith(
        f"training stopped: no room to write the checkpoint of step 8 in {root} (File too large; "
    )
    assert " free there); the last good checkpoint is " + str(ckpt.step_dir(root, 4)) in message
    assert message.endswith("free some space, then run the same command to resume")
    assert "\n" not in message and raised.value.exit_code == 1


def test_metrics_that_do_not_fit_stop_the_run_too(tmp_path, monkeypatch):
    def full(path, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks, "append_row", full)
    logger = MetricsLogger(tmp_path / "metrics.jsonl", 1, 128, 0, 12)
    with pytest.raises(DiskFull, match=re.escape(f"no room to write the metrics of step 3 in {tmp_path} (No space")):
        logger.write({"step": 3, "loss": 1.0})


def test_other_write_errors_are_not_a_full_disk():
    assert out_of_space(OSError(errno.EACCES, "Permission denied")) is None
    assert out_of_space(RuntimeError("errno = 28")) is None


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_the_same_command_resumes_once_there_is_room(tmp_path, reference):  # noqa: F811
    config, reference_dir = reference
    out = tmp_path / "runs"
    run_dir, root = out / "dev", out / "dev" / "checkpoints"
    full = run_command([sys.executable, str(FULL_DISK_AT), "12", str(64 * 1024), "run", "dev", str(config), str(out)])
    assert full.returncode == 1, full.stderr[-3000:]
    good = ckpt.latest(root)
    assert good is not None and good.step < 12
    line = re.escape(
        f"theseus: training stopped: no room to write the checkpoint of step 12 in {root} (File too large; "
    )
    line += r"[0-9.]+ (bytes|KiB|MiB|GiB|TiB) free there\); " + re.escape(
        f"the last good checkpoint is {good.path}; free some space, then run the same command to resume"
    )
    assert re.fullmatch(line, full.stderr.strip().splitlines()[-1]), full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "Exception ignored" not in full.stderr, full.stderr[-3000:]
    assert not list(root.glob(".tmp_*")), "the failed checkpoint's temporary folder was left behind"
    for checkpoint in ckpt.complete(root):  # every checkpoint written before is intact and complete
        ckpt.verify(checkpoint.path)
    assert max(c.step for c in ckpt.complete(root)) == good.step

    resumed = cli_run(config, out)  # the same command, with room to write
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {good.path} (step {good.step})" in resumed.stdout
    assert_same_checkpoint(ckpt.latest(reference_dir / "checkpoints"), ckpt.latest(root))
    assert_same_rows(rows(reference_dir), rows(run_dir))
