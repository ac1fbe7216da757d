"""Run by tests/test_locks.py as one worker of a sharded sweep: ``tvaccine`` with the stage functions wrapped so
that every stage this process computes appends a line "kind<TAB>folder<TAB>pid" to LOG (O_APPEND: lines of
concurrent workers never interleave). ALIGN_DELAY (seconds) makes each alignment that long slower, so that two
workers started together both reach the shared alignment while it is being computed.

usage: sweep_worker.py LOG <tvaccine arguments>
"""

import os
import sys
import time

from tvaccine.align import run as align
from tvaccine.attack import run as attack
from tvaccine.cli import main
from tvaccine.evaluation import run as evaluation


def logged(module, name: str, folder_arg: int, delay: float = 0.0) -> None:
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        line = f"{name}\t{args[folder_arg]}\t{os.getpid()}\n".encode()
        fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        time.sleep(delay)
        return inner(*args, **kwargs)

    setattr(module, name, wrapper)  # the pipeline imports these functions when a stage runs, so it gets the wrapper


if __name__ == "__main__":
    LOG = sys.argv[1]
    logged(align, "align", 3, float(os.environ.get("ALIGN_DELAY", "0")))
    logged(attack, "attack", 1)
    logged(evaluation, "evaluate", 1)
    sys.exit(main(sys.argv[2:]))
