"""`python kill_at.py SIGNAL@POINT ARGS...`: the theseus command line (`theseus ARGS...`), with
this process sending itself SIGNAL at POINT, to kill or stop a real run at an exact place:

- `step:N`: after optimizer step N, before that step's checkpoint (when one is due);
- `checkpoint:N`: once checkpoint N is fully written to its temporary folder, before the
  rename that publishes it.

The library knows nothing of this: the functions it calls there are wrapped here.
"""

import os
import signal
import sys

from theseus import cli
from theseus.training import checkpoint as ckpt
from theseus.training.callbacks import Checkpointer


def kill_at(plan: str) -> None:
    name, _, point = plan.partition("@")
    where, _, number = point.partition(":")
    at = int(number)

    def kill() -> None:
        os.kill(os.getpid(), signal.Signals[name])

    if where == "step":
        on_step_end = Checkpointer.on_step_end

        def killing_on_step_end(self, step, logs):
            if step == at:
                kill()
            on_step_end(self, step, logs)

        Checkpointer.on_step_end = killing_on_step_end
    elif where == "checkpoint":
        publish = ckpt.publish

        def killing_publish(tmp, final):
            if final == ckpt.step_dir(final.parent, at):
                kill()
            publish(tmp, final)

        ckpt.publish = killing_publish
    else:
        raise SystemExit(f"unknown point {point!r}: step:N or checkpoint:N")


if __name__ == "__main__":
    kill_at(sys.argv[1])
    sys.exit(cli.main(sys.argv[2:]))
