"""Weights & Biases: the metrics rows and the run's config, in one W&B run per theseus run.

W&B keeps its files in `RUN/wandb/`, and theseus keeps there the W&B run's id and the last
step logged to it (`run.json`), so a resumed theseus run appends to the same W&B run. Rows
that W&B already has are not logged again: W&B cannot delete rows, so after a resume the
steps that the dead attempt logged past its checkpoint (which `metrics.jsonl` dropped) keep
that attempt's values, and the resumed run's rows follow them.

Without network, set `WANDB_MODE=offline`: each attempt writes `RUN/wandb/offline-run-*`,
which `wandb sync` uploads (into the one run) later. Without an API key, theseus logs offline
rather than stopping.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from theseus.config import write_atomic

log = logging.getLogger("theseus")

STATE_FILE = "run.json"  # in RUN/wandb: {"id": the W&B run's id, "step": the last step logged to it}


class WandbWriter:
    """A metrics-row sink: every number of a row logged to a W&B run at the row's step.

    Args:
        folder: the run folder; W&B writes under `folder/wandb`.
        project: the W&B project.
        name: the W&B run's display name.
        config: the run's config (a tree of sections), W&B's run config.
    """

    def __init__(self, folder: str | os.PathLike, project: str, name: str, config: dict[str, Any]):
        import wandb

        self.state = Path(folder) / "wandb" / STATE_FILE
        saved = json.loads(self.state.read_text()) if self.state.is_file() else {}
        self.logged = saved.get("step", -1)
        self.state.parent.mkdir(parents=True, exist_ok=True)
        arguments: dict[str, Any] = dict(
            project=project,
            name=name,
            id=saved.get("id"),  # None: W&B picks one for a new run
            resume="allow",  # the same W&B run on every attempt of this theseus run
            dir=str(folder),
            config=config,
            reinit="create_new",  # a run of its own: another trainer in this process has another
            settings=wandb.Settings(silent=True, console="off"),
        )
        try:
            self.run = wandb.init(**arguments)
        except wandb.errors.UsageError as error:  # no API key: keep the rows, to upload later
            log.warning("W&B: %s; logging offline", str(error).splitlines()[0].rstrip("."))
            self.run = wandb.init(mode="offline", **arguments)
        self.id = self.run.id
        self._save()
        offline = self.run.settings.mode == "offline"
        where = f"offline in {self.run.settings.sync_dir} (upload: wandb sync)" if offline else self.run.url
        print(f"W&B run {self.id} of project {project}: {where}", flush=True)

    def __call__(self, row: dict[str, Any]) -> None:
        if row["step"] <= self.logged:  # logged by an attempt that died after its checkpoint
            return
        self.run.log({key: value for key, value in row.items() if key != "step"}, step=row["step"])
        self.logged = row["step"]
        self._save()

    def _save(self) -> None:
        write_atomic(self.state, json.dumps({"id": self.id, "step": self.logged}) + "\n")

    def close(self) -> None:
        """Finish the W&B run (wandb writes its last records out by the time the process exits)."""
        self.run.finish()
