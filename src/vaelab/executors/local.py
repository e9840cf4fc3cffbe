"""`LocalExecutor`: each experiment as `dvc exp run --temp` on this machine, ``jobs`` at a
time, in this process's group, so that Ctrl-C or a kill of the job reaches them too."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from vaelab.executors import Job, Outcome, child_env, dvc_exp_run

LOCK_BUSY = "Unable to acquire lock"  # DVC's words when another run holds the repo a moment
LOCK_TRIES = 10


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
                env=child_env(),
            )
            log = done.stdout + done.stderr
            if done.returncode == 0 or LOCK_BUSY not in log:
                break
            time.sleep(1 + attempt)  # another experiment of this job is being set up
        return Outcome(job, done.returncode == 0, log, time.perf_counter() - started)
