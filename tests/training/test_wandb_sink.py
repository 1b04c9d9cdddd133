"""`logging/wandb`: the metrics rows and the config in a real W&B run, offline (nothing leaves
the machine), read back from the run's `.wandb` files; a resumed run appends to the same W&B run."""

import json
import os
import signal
import struct
import sys

import pytest
import wandb  # the test extra's: run offline here, never skipped
from test_trainer import job_for, rows
from wandb.proto import wandb_internal_pb2

from theseus.config import ConfigError, load_yaml, nest
from theseus.experiments import JOBS
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import Interrupted, StepCallback

PretrainGPT = JOBS["gpt/train/pretrain"]

WANDB = {
    "logging/wandb": True,
    "logging/wandb_project": "tiny",
    "training/tokens": 4 * 32 * 12,
    "logging/validation_interval": 4,
}
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of chunks with 7-byte headers


def records(path):
    """The protobuf records of a `run-ID.wandb` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, chunk = 7, b""
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zeros that pad a block's end
            position += left
            continue
        chunk += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def attempts(run_dir):
    """Each attempt's W&B run: (its run record, its history rows as theseus rows), oldest first."""
    wandb.teardown()  # as when the process exits: wandb-core writes a finished run's file out asynchronously
    out = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (path,) = folder.glob("run-*.wandb")
        found = list(records(path))
        (run,) = [r.run for r in found if r.WhichOneof("record_type") == "run"]
        history = [
            {key_of(i): json.loads(i.value_json) for i in r.history.item} for r in found if r.HasField("history")
        ]
        out.append(
            (run, [{"step": h.pop("_step"), **{k: v for k, v in h.items() if not k.startswith("_")}} for h in history])
        )
    return out


def key_of(item):
    return item.key or "/".join(item.nested_key)


def config_of(run):
    return {key_of(i): json.loads(i.value_json) for i in run.config.update if key_of(i) != "_wandb"}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


class StopAt(StepCallback):
    """SIGTERM to this process after step `at`: the run stops there with a checkpoint."""

    def __init__(self, at, start_step):
        super().__init__(start_step)
        self.at = at

    def on_step_end(self, step, logs):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


class Stopped(PretrainGPT):
    def extra_callbacks(self, start_step):
        return [StopAt(6, start_step)]


@pytest.mark.slow
def test_the_wandb_run_holds_every_row_and_a_resume_appends_to_it(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):  # stopped by SIGTERM after step 6, with a checkpoint there
        job_for(run_dir, cls=Stopped, **WANDB).run()
    ((run, first),) = attempts(run_dir)
    assert first == rows(run_dir) and [r["step"] for r in first] == [0, 2, 4, 6]
    assert run.project == "tiny" and run.display_name == "run"
    assert config_of(run) == nest(load_yaml(run_dir / "config.yaml"))  # the whole config, by section
    assert config_of(run)["architecture"]["n_embd"] == 32

    # as if the attempt had died after logging step 6, before its checkpoint: the resume drops row 6
    ckpt.step_dir(run_dir / "checkpoints", 6).rename(tmp_path / "aside")
    job_for(run_dir, **WANDB).run()
    assert [r["step"] for r in rows(run_dir)] == [0, 2, 4, 6, 8, 10, 12]
    (_, again), (resumed, later) = attempts(run_dir)
    assert again == first  # the first attempt's file is left as it was
    assert resumed.run_id == run.run_id and json.loads((run_dir / "wandb" / "run.json").read_text())["step"] == 12
    assert later == rows(run_dir)[4:]  # step 6 is not logged twice: W&B keeps the first attempt's row,
    assert first[3]["loss"] == pytest.approx(rows(run_dir)[3]["loss"], abs=1e-5)  # the same but for timing


def test_a_missing_wandb_package_is_one_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as where it is not installed
    with pytest.raises(ConfigError, match=r"logging/wandb: true needs the wandb package"):
        job_for(**WANDB)


def test_without_an_api_key_the_rows_are_kept_offline(tmp_path, monkeypatch, caplog):
    from theseus.training.wandb_sink import WandbWriter

    monkeypatch.delenv("WANDB_MODE")  # online, as by default, but with no key anywhere:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # and nowhere to reach if it tried
    writer = WandbWriter(tmp_path / "run", "tiny", "run", {"training": {"seed": 1}})
    writer({"step": 3, "tokens": 12, "loss": 2.5})
    writer.close()
    assert "No API key" in caplog.text and "logging offline" in caplog.text
    ((run, history),) = attempts(tmp_path / "run")
    assert history == [{"step": 3, "tokens": 12, "loss": 2.5}] and config_of(run) == {"training": {"seed": 1}}
