"""Where MLflow runs go, and what identifies them (tags, names, lineage).

The default store is ``sqlite:///<project root>/mlflow.db`` with artifacts in
``<project root>/mlartifacts``. The project root is ``$DVC_ROOT`` when DVC sets it: for a
queued or ``--temp`` experiment DVC points it at the user's repository, not at the temporary
copy the stage runs in, so those runs land in the same store as a plain ``dvc repro``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from vaelab.atomic import write_text
from vaelab.params import Params

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
SWEEP_ENV = "VAELAB_SWEEP"
PARENT_ENV = "VAELAB_PARENT_RUN_ID"  # set by `python -m vaelab.sweep`: runs nest under it


def project_root(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> Path:
    """$DVC_ROOT if set, else the nearest folder upwards holding dvc.yaml, else ``cwd``."""
    if environ.get("DVC_ROOT"):
        return Path(environ["DVC_ROOT"]).resolve()
    here = (cwd or Path.cwd()).resolve()
    return next((p for p in (here, *here.parents) if (p / "dvc.yaml").is_file()), here)


def tracking_uri(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else the absolute SQLite store at the project root."""
    uri = environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root(environ, cwd) / STORE_FILE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative (e.g. what `mlflow run` passes on): anchor it at the project root, not
        # at a temporary experiment copy
        return f"sqlite:///{project_root(environ, cwd) / uri.removeprefix('sqlite:///')}"
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    from vaelab.errors import VaelabError

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except (OSError, urllib.error.URLError) as exc:
        raise VaelabError(
            f"the MLflow tracking server at {uri} does not answer ({exc}). Start it (README: "
            "'A shared tracking server'), fix MLFLOW_TRACKING_URI, or unset it to use the "
            "local store."
        ) from None


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, creating it (artifacts under the project root when local)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        # MLflow would default to ./mlartifacts of the current directory: in a temporary
        # experiment copy that is deleted afterwards.
        location = (root / ARTIFACT_DIR).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the repository at ``root`` (empty if not a git repository)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": str(bool(git("status", "--porcelain"))).lower(),
        }
    except (OSError, subprocess.CalledProcessError):
        return {}


def run_name(params: Params) -> str:
    """What distinguishes the run at a glance, e.g. ``beta=4 cyclical fb=0.5, mlp z=32``."""
    if params.train.run_name:
        return params.train.run_name
    kl, arch = params.train.kl, params.train.architecture
    name = f"beta={kl.beta:g} {kl.schedule}"
    if kl.free_bits:
        name += f" fb={kl.free_bits:g}"
    return f"{name}, {arch.kind} z={arch.latent_dim}"


def start_training_run(
    params: Params,
    data_md5: Mapping[str, str],
    run_file: Path,
    environ: MutableMapping[str, str] = os.environ,
) -> str:
    """The training's MLflow run id: resumed, adopted or new.

    - ``run_file`` exists: a resumed training continues its own run.
    - ``$MLFLOW_RUN_ID`` is set (``mlflow run`` created a run for this entry point): that
      run is the training run. The variable is then removed, so that no later run started
      in this process logs into it by accident.
    - otherwise a new run in ``base.experiment``.
    The run is driven through the client (no fluent "active run"), so a tracking server that
    goes away mid-training cannot fail the stage; see `vaelab.outbox`.
    """
    import mlflow
    from mlflow.entities import Param

    root = project_root(environ)
    uri = tracking_uri(environ)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    # A dead server should cost seconds per call, not minutes of retries.
    environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    adopted = environ.pop("MLFLOW_RUN_ID", None)
    client = mlflow.MlflowClient()
    if run_file.is_file():
        run_id = run_file.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        print(f"resuming MLflow run {run_id} from {run_file.parent}")
        return run_id
    tags = {**run_tags(params, root, data_md5, environ), "mlflow.runName": run_name(params)}
    if adopted:
        run_id = adopted
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    else:
        experiment_id = ensure_experiment(params.base.experiment, root)
        run_id = client.create_run(experiment_id, tags=tags, run_name=run_name(params)).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.flat().items()])
    write_text(run_file, run_id)
    return run_id


def start_command_run(experiment: str, run_name: str, root: Path):
    """The fluent run a command (compare, sweep) logs into: the one `mlflow run` created for
    it, or a new one in ``experiment``. ``$MLFLOW_RUN_ID`` is removed from the environment so
    that nothing started later (a subprocess, another run) logs into it by accident."""
    import mlflow

    adopted = os.environ.pop("MLFLOW_RUN_ID", None)
    if adopted:
        return mlflow.start_run(run_id=adopted)
    return mlflow.start_run(experiment_id=ensure_experiment(experiment, root), run_name=run_name)


def last_logged_epoch(run_id: str) -> int:
    """The last epoch whose metrics are in the run (0 for a new run)."""
    import mlflow

    return max(
        (m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")), default=0
    )


def end_run_quietly(run_id: str, status: str) -> None:
    """Mark the run ended; a store that does not answer is only reported."""
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status)
    except Exception as exc:  # the failure being reported matters more
        print(f"warning: could not mark MLflow run {run_id} {status}: {exc}", file=sys.stderr)


def training_run_id(params: Params) -> str:
    """The MLflow run the train stage recorded in results/train/run.json (store selected)."""
    import json

    import mlflow

    from vaelab.errors import VaelabError

    path = Path(params.base.paths.results) / "train" / "run.json"
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError) as exc:
        raise VaelabError(
            f"{path}: no training run recorded ({exc}); run `dvc repro train`"
        ) from None
    mlflow.set_tracking_uri(tracking_uri())
    return run_id


def run_tags(
    params: Params, root: Path, data_md5: Mapping[str, str], environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    kl = params.train.kl
    tags = {
        **git_state(root),
        "beta": f"{kl.beta:g}",
        "kl_schedule": kl.schedule,
        "free_bits": f"{kl.free_bits:g}",
        **{f"data_md5.{split}": md5 for split, md5 in data_md5.items()},
    }
    if environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = environ["DVC_EXP_NAME"]
    if environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = environ["DVC_EXP_BASELINE_REV"]
    # Runs of one sweep share a tag the UI can filter on: $VAELAB_SWEEP if given, else the
    # commit the DVC experiments were queued from.
    sweep = environ.get(SWEEP_ENV) or environ.get("DVC_EXP_BASELINE_REV", "")[:7]
    if sweep:
        tags["sweep"] = sweep
    if environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = environ[PARENT_ENV]
    return tags
