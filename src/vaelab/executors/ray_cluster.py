"""`RayExecutor`: the plan's experiments as Ray tasks on a cluster, one experiment per task.

A task runs on some node in a clean clone of the submitting commit (cloned from the team's git
remote, its objects shared with a clone kept on the node between tasks), as `dvc exp run`
with the plan's settings, in its own process group; then `dvc exp push` sends its ref to the
git remote and its outputs to the DVC remote. The driver fetches the ref back, so the runner
collects it exactly as a local one. A node that dies takes its attempts with it and Ray runs
them again elsewhere; an experiment that fails by itself is not retried (its outcome is the
runner's to judge). Credentials (the tracking server's, the remotes') come from each node's
own environment, the one `ray start` ran in, never from a task's arguments.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vaelab.core.errors import VaelabError
from vaelab.core.git import git
from vaelab.core.lock import exclusive
from vaelab.executors import Job, Outcome, child_env, dvc_exp_run

RETRIES = 3  # attempts after a node or worker dies
CLONES = "VAELAB_CLONES"  # where a node keeps its clone of the remote (default ~/.cache)
OFFLINE = {"RAY_USAGE_STATS_ENABLED": "0"}


def run_in_clone(remote: str, commit: str, job: Job, threads: str) -> tuple[bool, str, float]:
    """Run ``job`` at ``commit`` in a fresh clone of ``remote`` with TensorFlow's thread pools
    of ``threads`` threads, and push it: (ok, output, seconds)."""
    started = time.perf_counter()
    home = Path(os.environ.get(CLONES) or Path.home() / ".cache" / "vaelab" / "clones")
    shared = home / hashlib.sha256(remote.encode()).hexdigest()[:16]
    with exclusive(home, "", f".{shared.name}.lock", wait=True):  # one fetch at a time
        if not (shared / "HEAD").exists():
            git("clone", "--bare", "--quiet", remote, str(shared))
        git("fetch", "--quiet", remote, "+refs/heads/*:refs/heads/*", cwd=shared)
    work = Path(tempfile.mkdtemp(prefix=f"vaelab-{job.name}-"))
    try:
        git("clone", "--quiet", "--no-checkout", "--reference", str(shared), remote, str(work))
        if git("checkout", "--quiet", "--detach", commit, cwd=work, check=False).returncode:
            raise VaelabError(
                f"commit {commit[:7]} is not on the git remote the nodes clone: push it there "
                "(or name another with --git-remote), then run again"
            )
        log = []
        for command in (dvc_exp_run(job, temp=False), ["dvc", "exp", "push", "origin", job.name]):
            ok, output = _run(command, work, threads)
            log.append(output)
            if not ok:
                break
        return ok, "\n".join(log), time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(command: list[str], cwd: Path, threads: str) -> tuple[bool, str]:
    """``command`` in its own process group, which dies with this process (a cancelled task
    kills it; a worker killed with its node takes it along: `leash`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaelab.executors.leash", *command],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=child_env(
            OMP_NUM_THREADS=threads, TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads
        ),
    )
    try:
        output, _ = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode == 0, output


def retire_dead_attempts(name: str) -> list[str]:
    """Mark KILLED the MLflow runs of experiment ``name`` still RUNNING once it has finished:
    the attempts that died with their node (or with an earlier driver). Returns their ids."""
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.dvc_exp_name = '{name}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    for run in runs:
        mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in runs]


class RayExecutor:
    """Runs jobs on the Ray cluster at ``address`` ("auto": the one this machine belongs to),
    each with ``cpus`` and ``gpus``; ``remote`` is the git remote every node clones from."""

    def __init__(self, address: str, remote: str, cpus: float = 1, gpus: float | None = None):
        self.address, self.remote, self.cpus, self.gpus = address, remote, cpus, gpus

    def gather(self, baseline: str) -> None:
        """Fetch the refs of this baseline's experiments that finished on the cluster."""
        prefix = f"refs/exps/{baseline[:2]}/{baseline[2:]}"
        git("fetch", "--quiet", self.remote, f"+{prefix}/*:{prefix}/*")

    def run(self, jobs: list[Job]) -> Iterator[Outcome]:
        import ray

        os.environ.update(OFFLINE)
        ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
        commit = git("rev-parse", "HEAD").stdout.strip()
        gpus = self.gpus if self.gpus is not None else min(ray.cluster_resources().get("GPU", 0), 1)
        task = ray.remote(run_in_clone).options(
            num_cpus=self.cpus, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False
        )
        threads = str(max(1, int(self.cpus)))
        pending = {task.remote(self.remote, commit, job, threads): job for job in jobs}
        try:
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done)
                try:
                    ok, log, seconds = ray.get(done)
                except ray.exceptions.RayTaskError as exc:  # the task's own code (e.g. git)
                    ok, log, seconds = False, f"error: {exc.cause}", 0.0
                except ray.exceptions.RayError as exc:  # every attempt's node died
                    ok, log, seconds = False, f"error: the cluster lost every attempt: {exc}", 0.0
                if ok:
                    self.gather(commit)
                    retire_dead_attempts(job.name)
                yield Outcome(job, ok, log, seconds)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.shutdown()
