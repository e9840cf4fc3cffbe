"""The executor seam: what runs a job's experiments. The runner hands it jobs and reads back
each one's outcome as it ends; how and where they run is the executor's business.

`LocalExecutor` runs each as `dvc exp run --temp` on this machine, ``jobs`` at a time, in
this process's group, so that Ctrl-C or a kill of the job reaches them too.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Protocol

LOCK_BUSY = "Unable to acquire lock"  # DVC's words when another run holds the repo a moment
LOCK_TRIES = 10


@dataclass(frozen=True)
class Job:
    name: str  # the DVC experiment's
    stage: str  # the stage it runs up to
    settings: tuple[str, ...]  # -S values over params.yaml


@dataclass(frozen=True)
class Outcome:
    job: Job
    ok: bool
    log: str  # what the run printed
    seconds: float


class Executor(Protocol):
    def gather(self, baseline: str) -> None:
        """Bring here the refs of ``baseline``'s experiments that finished elsewhere."""
        ...

    def run(self, jobs: list[Job]) -> Iterator[Outcome]:
        """Run ``jobs``; yield each outcome as it ends, with its experiment ref in this
        repository. Jobs not yet started when the caller stops reading are not run."""
        ...


def dvc_exp_run(job: Job, temp: bool = True) -> list[str]:
    """The `dvc exp run` of ``job``: in a temporary copy of the workspace, or in it."""
    sets = [arg for value in job.settings for arg in ("-S", value)]
    return ["dvc", "exp", "run", *(["--temp"] if temp else []), "-n", job.name, job.stage, *sets]


class LocalExecutor:
    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs

    def gather(self, baseline: str) -> None:
        """Nothing to bring: every experiment runs in this repository."""

    def run(self, jobs: list[Job]) -> Iterator[Outcome]:
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(self._one, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    @staticmethod
    def _one(job: Job) -> Outcome:
        started = time.perf_counter()
        for attempt in range(LOCK_TRIES):
            done = subprocess.run(
                dvc_exp_run(job),
                capture_output=True,
                text=True,
                env={**os.environ, "DVC_NO_ANALYTICS": "1"},
            )
            log = done.stdout + done.stderr
            if done.returncode == 0 or LOCK_BUSY not in log:
                break
            time.sleep(1 + attempt)  # another experiment of this job is being set up
        return Outcome(job, done.returncode == 0, log, time.perf_counter() - started)
