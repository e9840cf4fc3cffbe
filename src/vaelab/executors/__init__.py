"""The executor seam: what runs a job's experiments. The experiment runner hands an executor
jobs and reads back each one's outcome as it ends; how and where they run is the executor's
business: `local.LocalExecutor` on this machine, `ray_cluster.RayExecutor` on a Ray cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


def child_env(**more: str) -> dict[str, str]:
    """This process's environment for a `dvc` child, with this interpreter's folder first on
    PATH: `dvc` and the stages' `python` are those vaelab runs with, even when it was started
    as `.venv/bin/vaelab` without the virtualenv on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", **more}
