"""A command on a leash dies, with everything it started, when the process that started it is
SIGKILLed (as a Ray worker is when its node dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# A parent that starts `bash`, which starts a long `sleep` and prints its pid, then waits:
# the `sleep` is a grandchild of the parent, as a stage is of `dvc exp run` on a Ray worker.
PARENT = """
import subprocess, sys, time
leash = [sys.executable, "-m", "vaelab.executors.leash"] if sys.argv[1] == "leash" else []
subprocess.Popen([*leash, "bash", "-c", "sleep 300 & echo $!; wait"], start_new_session=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, only not yet reaped
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def grandchild_after_parent_killed(mode: str, patience: float) -> int:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True
    )
    sleeper = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + patience
    while alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sleeper


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_the_whole_group_dies_with_a_sigkilled_parent_only_on_a_leash():
    sleeper = grandchild_after_parent_killed("leash", patience=10)
    assert not alive(sleeper)
    loose = grandchild_after_parent_killed("loose", patience=1)  # what a Ray task did before
    try:
        assert alive(loose)
    finally:
        os.kill(loose, signal.SIGKILL)


def test_the_leash_passes_the_exit_code_through():
    done = subprocess.run([sys.executable, "-m", "vaelab.executors.leash", "sh", "-c", "exit 7"])
    assert done.returncode == 7
