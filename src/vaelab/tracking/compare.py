"""The runs of an MLflow experiment (e.g. a sweep over KL weightings) as rows to compare, the
figures each logged, and the comparison run that records a report of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.tracking.runs import KIND_TAG, start_command_run, tag_filter

PAGE = 1000  # runs per search request (MLflow's most)
COLUMNS = [  # (header, where, key)
    ("run", "info", "run_name"),
    ("status", "info", "status"),
    ("beta", "params", "train.kl.beta"),
    ("schedule", "params", "train.kl.schedule"),
    ("free_bits", "params", "train.kl.free_bits"),
    ("prior", "params", "train.prior.kind"),
    ("test_nll", "metrics", "test_nll"),
    ("neg_elbo", "metrics", "test_neg_elbo"),
    ("reconstruction", "metrics", "test_reconstruction"),
    ("kl_rate", "metrics", "test_kl"),
    ("active_units", "metrics", "test_active_units"),
    ("latent_accuracy", "metrics", "test_latent_accuracy"),
    ("frechet", "metrics", "test_frechet_distance"),
    ("epochs", "tags", "epochs_run"),
    ("train_seconds", "metrics", "train_seconds"),
]


@dataclass
class RunRow:
    run_id: str
    values: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)

    def number(self, header: str) -> float | None:
        value = self.values.get(header)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    @property
    def label(self) -> str:
        return f"beta={self.values.get('beta') or '?'} {self.values.get('schedule') or ''}".strip()


def collect(experiment: str, sweep: str | None = None) -> list[RunRow]:
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
    rows = []
    for run in runs:
        if KIND_TAG in run.data.tags:  # a sweep's parent run or an earlier comparison
            continue
        sources = {
            "info": {"run_name": run.info.run_name, "status": run.info.status},
            "params": run.data.params,
            "metrics": run.data.metrics,
            "tags": run.data.tags,
        }
        values = {header: sources[where].get(key) for header, where, key in COLUMNS}
        curve = [
            (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_neg_elbo")
        ]
        rows.append(RunRow(run.info.run_id, values, sorted(curve)))
    return rows


def fetch_figures(rows: list[RunRow], dest: Path) -> dict[str, dict[str, Path | None]]:
    import mlflow

    found: dict[str, dict[str, Path | None]] = {}
    for row in rows:
        found[row.run_id] = {}
        for kind in ("reconstructions", "prior_samples"):
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=row.run_id,
                    artifact_path=f"figures/{kind}.png",
                    dst_path=str(dest / row.run_id),
                )
                found[row.run_id][kind] = Path(local)
            except Exception:  # absent for failed or unfinished runs: shown as missing
                found[row.run_id][kind] = None
    return found


def log_comparison(experiment: str, sweep: str | None, paths: list[Path]) -> None:
    """Log the report's files as a `comparison` run (under `mlflow run -e compare`, the
    project's run)."""
    import mlflow

    with start_command_run(experiment, "comparison", sweep):
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="comparison")
