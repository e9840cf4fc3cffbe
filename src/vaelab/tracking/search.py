"""The training runs of an MLflow experiment (of one sweep, if asked) as they were logged, the
figures each logged, and the comparison run that records a report of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vaelab.tracking.runs import KIND_TAG, start_command_run, tag_filter

PAGE = 1000  # runs per search request (MLflow's most)
FIGURES = ("reconstructions", "prior_samples")


@dataclass
class LoggedRun:
    run_id: str
    fields: dict[str, dict]  # "info" (run_name, status), "params", "metrics", "tags"
    curve: list[tuple[int, float]]  # (epoch, validation -ELBO)


def collect(experiment: str, sweep: str | None = None) -> list[LoggedRun]:
    """Every training run of ``experiment`` (of one sweep if given), oldest first."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = tag_filter("sweep", sweep) if sweep else ""
    runs, token = [], None
    while True:  # page by page: one search answers at most PAGE runs
        page = client.search_runs([found.experiment_id], query, max_results=PAGE,
                                  order_by=["attributes.start_time"], page_token=token)  # fmt: skip
        runs += page
        token = page.token
        if not token:
            break
    logged = []
    for run in (r for r in runs if KIND_TAG not in r.data.tags):  # not a parent or comparison
        info = {"run_name": run.info.run_name, "status": run.info.status}
        data = {"info": info, "params": run.data.params, "metrics": run.data.metrics,
                "tags": run.data.tags}  # fmt: skip
        history = client.get_metric_history(run.info.run_id, "val_neg_elbo")
        logged.append(LoggedRun(run.info.run_id, data, sorted((m.step, m.value) for m in history)))
    return logged


def fetch_figures(run_ids: list[str], dest: Path) -> dict[str, dict[str, Path | None]]:
    """Each run's logged figures (`FIGURES`), downloaded into ``dest``; None where absent."""
    import mlflow

    found: dict[str, dict[str, Path | None]] = {}
    for run_id in run_ids:
        found[run_id] = {}
        for kind in FIGURES:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=f"figures/{kind}.png", dst_path=str(dest / run_id)
                )
                found[run_id][kind] = Path(local)
            except Exception:  # absent for failed or unfinished runs: shown as missing
                found[run_id][kind] = None
    return found


def log_comparison(experiment: str, sweep: str | None, paths: list[Path]) -> None:
    """Log the report's files as a `comparison` run (under `mlflow run -e compare`, the
    project's run)."""
    import mlflow

    with start_command_run(experiment, "comparison", sweep):
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="comparison")
