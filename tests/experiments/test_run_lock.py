"""One writer per run folder: a second run (or cooldown) on a folder that a live process is
training is refused with one line naming that process, and changes nothing there; the lock of
a killed process is taken over."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import run_command

from theseus.experiments import runs
from theseus.experiments.cooldown import cooldown

TESTS = Path(__file__).resolve().parents[1]
KILL_AT = TESTS / "training" / "kill_at.py"
ME = f"process {os.getpid()} on {socket.gethostname()} (since "
TINY = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "logging/checkpoint_interval": 4,
    "logging/log_interval": 1,
    "logging/validation_interval": 4,
    "logging/validation_batches": 2,
    "logging/progress_bar": False,
    "logging/peak_flops": 1e12,
    "logging/plot": False,
    "topology/devices": 1,
}


def snapshot(folder):
    """Every file and folder under `folder`: its size and modification time."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        info = path.stat()
        found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


def test_a_second_writer_is_refused_naming_the_first_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with runs.RunLock(run_dir):
        (run_dir / "config.yaml").write_text("job: x\n")
        before = snapshot(run_dir)
        with pytest.raises(runs.RunFolderBusy) as refused:
            runs.RunLock(run_dir).acquire()
        assert snapshot(run_dir) == before
    message = str(refused.value)
    assert message.startswith(f"run folder {run_dir} is being written by {ME}") and "\n" not in message
    assert refused.value.exit_code == 2
    assert (run_dir / runs.LOCK_FILE).read_text() == ""  # released: a clean end empties it
    with runs.RunLock(run_dir):  # and the next writer takes it without a word
        pass


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"pid": int(dead.stdout), "host": "elsewhere", "since": "2026-01-01 00:00:00 UTC"}
    (run_dir / runs.LOCK_FILE).write_text(json.dumps(holder) + "\n")  # its lock died with it
    with runs.RunLock(run_dir):
        assert json.loads((run_dir / runs.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (
        f"taking over the lock of run folder {run_dir} from process {holder['pid']} on elsewhere "
        "(since 2026-01-01 00:00:00 UTC) (no longer running)"
    ) in capsys.readouterr().out


def test_fresh_sets_the_locked_folder_aside_and_locks_the_new_one(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with runs.RunLock(run_dir) as lock:
        assert not lock.holds_a_run()
        (run_dir / "config.yaml").write_text("job: x\n")
        assert lock.holds_a_run()
        aside = lock.set_aside()
        assert sorted(p.name for p in aside.iterdir()) == [runs.LOCK_FILE, "config.yaml"]
        assert (aside / runs.LOCK_FILE).read_text() == ""  # the old folder's lock is released
        with pytest.raises(runs.RunFolderBusy, match="is being written by process"):
            runs.RunLock(run_dir).acquire()  # the new one is held
    assert f"moved the previous run to {aside}" in capsys.readouterr().out
    assert sorted(p.name for p in run_dir.iterdir()) == [runs.LOCK_FILE]


def write_config(path, steps):
    fields, values = runs.configure("gpt/train/pretrain", {**TINY, "training/tokens": 4 * 32 * steps}, require=True)
    path.write_text(runs.config_text("gpt/train/pretrain", fields, values))
    return path


def wait_until_stopped(process, timeout=300):
    """Wait (polling, with a deadline) until `process` stops itself with SIGSTOP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(process.pid, os.WNOHANG | os.WUNTRACED)
        if pid:
            assert os.WIFSTOPPED(status), f"the first run ended (status {status}) instead of stopping"
            return
        time.sleep(0.05)
    raise AssertionError(f"the first run did not reach its step in {timeout} s")


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_folder_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    config = write_config(tmp_path / "gpt.yaml", steps=12)
    out = tmp_path / "runs"
    run_dir = out / "dev"
    log = (tmp_path / "first.out").open("w")
    first = subprocess.Popen(  # trains, writes its checkpoint of step 4, then stops (alive) in step 6
        [sys.executable, str(KILL_AT), "SIGSTOP@step:6", "run", "dev", str(config), str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until_stopped(first)
        assert (run_dir / "checkpoints" / "step_00000004").is_dir(), (tmp_path / "first.out").read_text()[-3000:]
        before = snapshot(run_dir)
        second = run_command([sys.executable, "-m", "theseus.cli", "run", "dev", str(config), str(out)])
        assert second.returncode == 2, second.stderr[-3000:]
        holder = f"process {first.pid} on {socket.gethostname()} (since "
        said = [line for line in second.stderr.splitlines() if line.startswith("theseus")]
        assert len(said) == 1 and "Traceback" not in second.stderr, second.stderr
        assert said[0].startswith(f"theseus: error: run folder {run_dir} is being written by {holder}")
        assert snapshot(run_dir) == before  # names, sizes and times: nothing changed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log.close()

    third = run_command([sys.executable, "-m", "theseus.cli", "run", "dev", str(config), str(out)])
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of run folder {run_dir} from process {first.pid} on " in third.stdout
    assert "(step 4)" in third.stdout and "resuming from" in third.stdout
    assert (run_dir / "checkpoints" / "step_00000012").is_dir()
    assert (run_dir / runs.LOCK_FILE).read_text() == ""


PARENT = {
    **TINY,
    "training/tokens": 4 * 32 * 12,
    "optimization/warmup": 2,
    "optimization/decay": 4,
    "logging/keep_checkpoints": 0,
}


@pytest.mark.slow
def test_a_cooldown_branch_being_written_is_refused(tmp_path):
    parent = tmp_path / "parent"
    fields, values = runs.configure("gpt/train/pretrain", PARENT, require=True)
    runs.launch("gpt/train/pretrain", fields, values, tmp_path, parent.name)
    result = cooldown(parent, 4, steps=2, name="branch")
    branch = Path(result["run_dir"])
    assert (branch / runs.LOCK_FILE).read_text() == ""  # it was held, and released at the end
    for name in ("branch", "new"):  # an existing branch, and one being laid out
        folder = branch if name == "branch" else tmp_path / ".new.tmp"
        with runs.RunLock(folder):
            before = snapshot(tmp_path)
            with pytest.raises(runs.RunFolderBusy, match=re.escape(f"run folder {folder} is being written by {ME}")):
                cooldown(parent, 4, steps=2, name=name)
            assert snapshot(tmp_path) == before
