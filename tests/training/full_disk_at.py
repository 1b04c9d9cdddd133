"""`python full_disk_at.py STEP BYTES ARGS...`: the theseus command line (`theseus ARGS...`) on a
disk that fills up at the checkpoint of step STEP: from there on, no file may grow beyond
BYTES (`RLIMIT_FSIZE`), so writing a larger one fails with EFBIG, as on a full disk.

SIGXFSZ, which the kernel sends with that error, is ignored, so the write fails instead of
killing the process. The library knows nothing of this: `checkpoint.save` is wrapped here.
"""

import resource
import signal
import sys

from theseus import cli
from theseus.training import checkpoint as ckpt


def full_disk_at(step: int, limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    save = ckpt.save

    def save_on_a_full_disk(root, model, state, *args, **kwargs):
        if int(state["step"]) == step:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return save(root, model, state, *args, **kwargs)

    ckpt.save = save_on_a_full_disk


if __name__ == "__main__":
    full_disk_at(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(cli.main(sys.argv[3:]))
