"""What identifies a training run in MLflow: its tags and name, starting or resuming it, and
finding it again from the train stage's outputs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError, redact
from vaelab.core.git import git
from vaelab.core.overrides import differences, dvc_value
from vaelab.core.params import Params, validate
from vaelab.core.paths import Artifacts, project_root
from vaelab.tracking.datasets import log_datasets
from vaelab.tracking.store import check_run_id, connect, ensure_experiment

KIND_TAG = "vaelab.kind"  # marks runs that are not trainings: a sweep's parent, a comparison


def tag_filter(key: str, value: str) -> str:
    """An MLflow search filter ``tags.<key> = <value>``, quoted so that any value matches."""
    if "'" not in value:
        return f"tags.{key} = '{value}'"
    if '"' not in value:
        return f'tags.{key} = "{value}"'
    raise VaelabError(
        f"{key} {value!r} holds both ' and \" quotes, which an MLflow search cannot match: "
        "use a name without one of them"
    )


def adopt_project_run(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The run `mlflow run` created for this entry point ($MLFLOW_RUN_ID), if any. The variable
    is removed, so that nothing started later (a subprocess, another run) logs into it."""
    return environ.pop("MLFLOW_RUN_ID", None)


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the repository at ``root`` (empty if not a git repository)."""

    try:
        commit = git("rev-parse", "HEAD", cwd=root).stdout.strip()
        dirty = bool(git("status", "--porcelain", cwd=root).stdout.strip())
    except VaelabError:
        return {}
    return {"mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower()}


NAMED_BY = ("base", "prepare", "train", "classifier", "evaluate", "figures")  # not tracking
NAME_LENGTH = 250  # MLflow's column for run names (enforced by PostgreSQL)


def run_name(params: Params, root: Path | None = None) -> str:
    """What distinguishes the run at a glance: the params that differ from the params.yaml
    committed at ``root``'s HEAD, as ``section.key=value`` (``kl.beta=4 base.seed=2`` in a
    DVC experiment), else the KL weighting, prior and model (``beta=1 linear mixture-64, mlp
    z=32``)."""
    if params.train.run_name:
        return params.train.run_name
    committed = _committed(root)
    changed = differences(params, committed, NAMED_BY) if committed else {}
    if changed:
        name = " ".join(f"{'.'.join(k.split('.')[-2:])}={_short(v)}" for k, v in changed.items())
        return name if len(name) <= NAME_LENGTH else name[: NAME_LENGTH - 1] + "…"
    kl, arch = params.train.kl, params.train.architecture
    name = f"beta={kl.beta:g} {kl.schedule}"
    if kl.free_bits:
        name += f" fb={kl.free_bits:g}"
    if params.train.prior.kind == "mixture":
        name += f" mixture-{params.train.prior.components}"
    return f"{name}, {arch.kind} z={arch.latent_dim}"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else dvc_value(value)


def _committed(root: Path | None) -> Params | None:
    """params.yaml as committed at ``root``'s HEAD; None outside git or for another schema."""
    if root is None:
        return None
    try:
        shown = git("show", "HEAD:params.yaml", cwd=root, check=False)
        return validate(yaml.safe_load(shown.stdout), "HEAD:params.yaml")
    except (VaelabError, yaml.YAMLError, TypeError):
        return None


def recorded_epochs(exp_name: str) -> list[dict[str, float]]:
    """The epochs MLflow holds of the newest training run of DVC experiment ``exp_name``, as
    history rows: a diverged training's too, whose experiment DVC never commits. [] if there
    is no such run."""
    import mlflow

    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=tag_filter("dvc_exp_name", exp_name),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        return []
    client, rows = mlflow.MlflowClient(), {}
    for key in (k for k in found[0].data.metrics if "/" not in k):  # not system/... metrics
        for metric in client.get_metric_history(found[0].info.run_id, key):
            if metric.step >= 1:  # per-epoch metrics have step = epoch
                rows.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [rows[epoch] for epoch in sorted(rows)]


def start_training_run(
    params: Params,
    meta: Mapping[str, Any],
    run_file: Path,
    environ: MutableMapping[str, str] = os.environ,
) -> str:
    """The training's MLflow run id: resumed, adopted or new.

    - ``run_file`` exists: a resumed training continues its own run.
    - ``$MLFLOW_RUN_ID`` is set (``mlflow run`` created a run for this entry point): that
      run is the training run (see `adopt_project_run`).
    - otherwise a new run in ``base.experiment``.
    The run is driven through the client (no fluent "active run"), so a tracking server that
    goes away mid-training cannot fail the stage; see `vaelab.tracking.outbox`.
    """
    import mlflow
    from mlflow.entities import Param

    uri = connect(require=True, environ=environ)
    adopted = adopt_project_run(environ)
    client = mlflow.MlflowClient()
    if run_file.is_file():
        run_id = check_run_id(run_file.read_text().strip(), f"{run_file} (delete its folder)")
        _check_run_in_store(run_id, uri, run_file)
        client.update_run(run_id, status="RUNNING")
        print(f"resuming MLflow run {run_id} from {run_file.parent}")
        return run_id
    root = project_root(environ)
    name = run_name(params, root)
    tags = {**run_tags(params, root, meta["md5"], environ), "mlflow.runName": name}
    if adopted:
        run_id = adopted
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    else:
        experiment_id = ensure_experiment(params.base.experiment)
        tags.update({"mlflow.source.type": "LOCAL", "mlflow.source.name": "dvc stage train"})
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.flat().items()])
    log_datasets(run_id, Artifacts.of(params), meta)
    write_text(run_file, run_id)
    return run_id


@contextlib.contextmanager
def system_metrics(params: Params, run_id: str) -> Iterator[None]:
    """CPU, memory and disk use of the machine, sampled into the run while the block runs
    (``tracking.system_metrics``)."""
    cfg = params.tracking
    if not cfg.system_metrics:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=cfg.system_metrics_interval)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _check_run_in_store(run_id: str, uri: str, run_file: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise VaelabError(
                f"{run_file}: the interrupted training's MLflow run {run_id} is not in the "
                f"tracking store {uri}. Point MLFLOW_TRACKING_URI back at the store it "
                f"started in to resume it, or delete {run_file.parent} to train from scratch."
            ) from None
        raise VaelabError(
            f"the tracking store {uri} did not answer for the interrupted training's run "
            f"{run_id} ({exc.error_code}: {redact(exc.message)}). Fix the access (server, "
            f"credentials) and re-run: the resume state in {run_file.parent} is kept."
        ) from None


def _kept_run(kept: Path, name: str, params: dict[str, str]) -> str | None:
    """The run whose id ``kept`` holds if the store has it (active), and it had ``params``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.MlflowClient().get_run(kept.read_text().strip())
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if found.info.lifecycle_stage != "active":
        return None
    before = found.data.params
    other = {k: before[k] for k, v in params.items() if before.get(k, v) != v}
    if other:
        raise VaelabError(
            f"{name} ran before with {other} (its run's id is in {kept}): give this one "
            "another name, or delete that folder to start over"
        )
    return found.info.run_id


def start_command_run(
    experiment: str,
    kind: str,
    sweep: str | None = None,
    job: Path | None = None,
    params: dict[str, str] | None = None,
):
    """The fluent run a command of ``kind`` (comparison, sweep) logs into, tagged with its
    kind and ``sweep``, with its ``params``: the one `mlflow run` created for it; else the one
    whose id the ``job``'s folder keeps (an earlier start of the same job), if the store has
    it; else a new one in ``experiment``, its id then kept in ``job``."""
    import mlflow

    name, params = f"{kind} {sweep or ''}".strip(), params or {}
    kept = job / "mlflow_run_id" if job else None
    run_id = adopt_project_run() or (kept and kept.exists() and _kept_run(kept, name, params))
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(experiment_id=ensure_experiment(experiment), run_name=name)
        if kept:
            write_text(kept, run.info.run_id)
    mlflow.set_tags({KIND_TAG: kind, **({"sweep": sweep} if sweep else {})})
    mlflow.log_params(params)
    return run


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
        warning = f"warning: could not mark MLflow run {run_id} {status}: {redact(str(exc))}"
        print(warning, file=sys.stderr)


def training_run_id(params: Params) -> str:
    """The MLflow run the train stage recorded, with the store connected."""
    path = Artifacts.of(params).train_run
    try:
        run_id = check_run_id(json.loads(path.read_text(encoding="utf-8"))["run_id"], "run_id")
    except FileNotFoundError:
        raise VaelabError(f"{path}: missing; run `dvc repro train` (or `dvc checkout`)") from None
    except (OSError, ValueError, KeyError, TypeError, VaelabError) as exc:
        raise VaelabError(
            f"{path}: no training run recorded ({exc}); restore it with `dvc checkout` or "
            "re-run `dvc repro train`"
        ) from None
    connect()
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
    # Runs of one sweep share a tag the UI can filter on: the sweep's name if it set one,
    # else the commit the DVC experiments were run from.
    sweep = params.tracking.sweep or environ.get("DVC_EXP_BASELINE_REV", "")[:7]
    if sweep:
        tags["sweep"] = sweep
    if params.tracking.parent_run:
        tags["mlflow.parentRunId"] = params.tracking.parent_run
    return tags


# What a run's numbers are in MLflow: measurements are metrics (so they are charted), settings
# and counts are tags (so they can be filtered on), each under one name.
SUMMARY_TAGS = {"best_epoch": "best_epoch", "epochs": "epochs_run"}
EVALUATION_TAGS = {"test_images": "test_images", "importance_samples": "importance_samples"}


def mlflow_names(
    values: dict[str, Any],
    prefix: str,
    tags: dict[str, str],
    renamed: dict[str, str],
    skipped: frozenset[str] = frozenset(),
) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of a stage's numbers: the keys in ``tags`` become tags under the names
    it gives, those in ``renamed`` metrics under theirs, the rest metrics named ``prefix + key``;
    ``skipped`` keys are logged elsewhere already."""
    metrics = {
        renamed.get(k, prefix + k): float(v)
        for k, v in values.items()
        if k not in tags and k not in skipped
    }
    return metrics, {name: str(values[k]) for k, name in tags.items()}


def finish_training_run(
    params: Params,
    run_id: str,
    summary: dict[str, Any],
    rows: list[dict[str, float]],
    served: dict[str, Any],
) -> None:
    """Log the epochs still unsent, the best epoch's validation numbers (``best_val_*``), the
    training time, the history and the model as ``served`` describes it (see
    `vaelab.serving.log.served_model`), then mark the run FINISHED."""
    paths = Artifacts.of(params)
    metrics, tags = mlflow_names(summary, "best_", SUMMARY_TAGS, {"train_seconds": "train_seconds"})
    log_to_training_run(
        params,
        run_id,
        metrics=metrics,
        tags=tags,
        rows=rows,
        artifacts=[(str(paths.train_history), "train")],
        model=str(paths.model),
        served=served,
        status="FINISHED",
    )


def log_evaluation(params: Params, run_id: str, numbers: dict[str, Any]) -> None:
    """The evaluate stage's numbers as ``test_*`` metrics, its settings as tags."""
    metrics, tags = mlflow_names(
        numbers,
        "test_",
        EVALUATION_TAGS,
        {"evaluate_seconds": "evaluate_seconds"},  # a time, not a test metric
        frozenset({"latent_dim"}),  # already the param train.architecture.latent_dim
    )
    log_to_training_run(
        params,
        run_id,
        metrics=metrics,
        tags=tags,
        artifacts=[(str(Artifacts.of(params).latent_dims), "evaluate")],
    )


def log_to_training_run(params: Params, run_id: str, **parts: Any) -> None:
    """Send ``parts`` (see `Delivery`) to the training's run, or keep them in the outbox."""
    from vaelab.tracking.outbox import Delivery, deliver

    if deliver(Delivery(run_id, **parts), Artifacts.of(params).outbox()):
        print(f"logged to MLflow run {run_id}")
