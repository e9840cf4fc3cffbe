"""A sweep with DVC's own experiment queue, grouped in MLflow, then compared.

    python -m vaelab.experiments.sweep -S 'train.kl.beta=0.5,1,2,4' [-S ...] [--jobs 1] \
        [--name NAME]

This is the documented manual procedure as one command:

    export VAELAB_SWEEP=NAME
    dvc exp run --queue -S 'train.kl.beta=0.5,1,2,4'
    dvc queue start -j 1        # workers inherit VAELAB_SWEEP; wait for them
    python -m vaelab.experiments.compare --sweep NAME

plus a parent MLflow run (``sweep NAME``) that every training run nests under. When started
by ``mlflow run -e sweep`` the project's run is that parent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

from vaelab.core.errors import VaelabError
from vaelab.core.paths import REPORTS, Artifacts
from vaelab.experiments import compare, registry
from vaelab.tracking.runs import KIND_TAG, PARENT_ENV, SWEEP_ENV, start_command_run
from vaelab.tracking.store import connect

ACTIVE = ("Queued", "Running")


def dvc(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise VaelabError(f"`dvc {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def _count(status: str, state: str) -> int:
    return sum(state in line.split() for line in status.splitlines())


def wait_for_queue(jobs: int, env: dict[str, str], poll: float = 5.0) -> str:
    """Block until nothing is queued or running; return the final status.

    DVC's workers exit when they find the queue empty, and one can do so while a task is
    still waiting (seen here: three of four experiments ran, the fourth stayed queued with
    no worker). Queued tasks with nothing running get workers started again.
    """
    while True:
        status = dvc("queue", "status")
        if not any(_count(status, state) for state in ACTIVE):
            return status
        if _count(status, "Queued") and not _count(status, "Running"):
            time.sleep(poll)  # a worker may be between tasks
            status = dvc("queue", "status")
            if _count(status, "Queued") and not _count(status, "Running"):
                dvc("queue", "start", "-j", str(jobs), env=env)
        time.sleep(poll)


def experiment_file(name: str, path: str) -> str | None:
    """The text of ``path`` as DVC experiment ``name`` committed it; None if there is none."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        return None
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


def experiment_run_ids(names: list[str], run_file: Path) -> dict[str, str]:
    """{experiment name: MLflow run id} from ``run_file`` (the train stage's run.json) as
    each finished experiment committed it.

    When an experiment's training is unchanged from one DVC has already run (e.g. the sweep
    includes the baseline's beta), DVC restores that run's outputs instead of training, so
    the run it names is an earlier one; the sweep tags it too.
    """
    found = {}
    for name in names:
        text = experiment_file(name, run_file.as_posix())
        if text is not None:
            found[name] = json.loads(text)["run_id"]
    return found


def main(argv: list[str] | None = None) -> None:
    import mlflow

    from vaelab.core.params import load_params

    parser = argparse.ArgumentParser(description="Sweep params with DVC's queue, compare.")
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        required=True,
        help="as for `dvc exp run -S`, e.g. 'train.kl.beta=0.5,1,2,4'",
    )
    parser.add_argument("--jobs", "-j", type=int, default=1)
    parser.add_argument("--name", help="sweep tag (default: sweep-<time>)")
    parser.add_argument("--out", default=str(REPORTS / "compare"))
    args = parser.parse_args(argv)
    name = args.name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    params = load_params()

    connect(require=True)
    # The mlflow-run project run, if any, becomes the parent (and leaves the environment
    # before it is passed to the experiments).
    parent = start_command_run(params.base.experiment, f"sweep {name}")
    env = dict(os.environ)
    with parent:
        mlflow.set_tags({"sweep": name, KIND_TAG: "sweep"})
        mlflow.log_param("sweep.overrides", " ".join(args.set_param))
        env.update({SWEEP_ENV: name, PARENT_ENV: parent.info.run_id})
        queue_args = [arg for value in args.set_param for arg in ("-S", value)]
        queued = dvc("exp", "run", "--queue", *queue_args, env=env)
        print(queued)
        print(dvc("queue", "start", "-j", str(args.jobs), env=env))
        print(wait_for_queue(args.jobs, env))
        names = re.findall(r"Queued experiment '([^']+)'", queued)
        client = mlflow.MlflowClient()
        for run_id in experiment_run_ids(names, Artifacts.of(params).train_run).values():
            client.set_tag(run_id, "sweep", name)
    compare.main(["--experiment", params.base.experiment, "--sweep", name, "--out", args.out])
    print(registry.promote(params.base.experiment, sweep=name))


if __name__ == "__main__":
    from vaelab.core.cli import run_command

    run_command(main)
