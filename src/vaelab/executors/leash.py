"""`python -m vaelab.executors.leash COMMAND...`: COMMAND in a process group of its own that
dies, whole, with the process that started it, even one killed by SIGKILL.

Linux sends this process SIGTERM when its parent dies (the parent-death signal), and it then
kills its group: so a Ray worker that dies with its node takes its `dvc exp run`, and the
stage that one started, along, instead of leaving them to train on and log a second run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # prctl(2)


def _kill_group(signum: int, frame: object) -> None:
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parent = os.getppid()
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, _kill_group)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was set
        _kill_group(signal.SIGTERM, None)
    return subprocess.call(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
