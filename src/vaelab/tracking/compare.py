"""Compare the runs of an MLflow experiment (e.g. a sweep over KL weightings) in one report.

    vaelab compare [--sweep NAME] [--out reports/compare]

A command rather than a DVC stage: its input is the MLflow store, which DVC cannot hash, so
as a stage it would be either always stale or always re-run. It writes a table (CSV and
Markdown), the rate-distortion plot, reconstructions and prior samples of every run side by
side, and the validation curves overlaid; then logs them as a `comparison` run. Runs that
failed or lack a metric are listed with the gap shown as missing.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
from tabulate import tabulate

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.experiments import figures
from vaelab.experiments.figures import RatePoint
from vaelab.report.plots import save_figure
from vaelab.tracking.runs import KIND_TAG, tag_filter

PAGE = 1000  # runs per search request (MLflow's most)
SIDE_BY_SIDE = 40  # runs in the side-by-side figure: 3.2 inches each, far under 2^16 px
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


def cell(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")  # a Markdown table cell


def table_csv(rows: list[RunRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run_id"] + [header for header, _, _ in COLUMNS])
    for row in rows:
        writer.writerow([row.run_id] + [cell(row.values[h]) for h, _, _ in COLUMNS])
    return out.getvalue()


def table_markdown(rows: list[RunRow]) -> str:
    headers = [header for header, _, _ in COLUMNS]
    cells = [[cell(row.values[h]) for h in headers] for row in rows]
    return tabulate(cells, headers, tablefmt="github", disable_numparse=True) + "\n"


def rate_distortion(rows: list[RunRow]) -> plt.Figure:
    points = [
        RatePoint(r.label, r.number("kl_rate"), r.number("reconstruction"))
        for r in rows
        if r.number("kl_rate") is not None and r.number("reconstruction") is not None
    ]
    missing = len(rows) - len(points)
    title = "Rate-distortion of the runs" + (
        f"; {missing} run(s) without metrics not shown" if missing else ""
    )
    return figures.rate_distortion(points, title)


def validation_curves(rows: list[RunRow]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        if row.curve:
            steps, values = zip(*row.curve, strict=True)
            ax.plot(steps, values, label=row.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation -ELBO (beta = 1), nats")
    ax.set_title("Validation curves of all runs")
    if any(row.curve for row in rows):
        ax.legend(fontsize=8)
    return fig


def shown_side_by_side(rows: list[RunRow]) -> list[RunRow]:
    """The runs the side-by-side figure has room for: all, or the SIDE_BY_SIDE of lowest test
    NLL (a figure must stay under matplotlib's 2^16 pixels a side)."""
    if len(rows) <= SIDE_BY_SIDE:
        return rows
    ranked = sorted(rows, key=lambda r: (r.number("test_nll") is None, r.number("test_nll") or 0))
    return ranked[:SIDE_BY_SIDE]


def side_by_side(
    rows: list[RunRow], images: dict[str, dict[str, Path | None]], title: str
) -> plt.Figure:
    """One row per run: its reconstructions figure and its prior samples figure."""
    kinds = ["reconstructions", "prior_samples"]
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(14, 3.2 * len(rows)),
        gridspec_kw={"width_ratios": [2.2, 1]},
        squeeze=False,
    )
    for ax_row, row in zip(axes, rows, strict=True):
        for ax, kind in zip(ax_row, kinds, strict=True):
            path = images[row.run_id].get(kind)
            if path is not None:
                ax.imshow(mpimg.imread(path))
            else:
                ax.text(0.5, 0.5, f"{kind}: missing", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(row.label, fontsize=11)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


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


def write_report(rows: list[RunRow], out: Path) -> list[Path]:
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "runs.csv", table_csv(rows))
    write_text(out / "runs.md", table_markdown(rows))
    paths = [
        out / "runs.csv",
        out / "runs.md",
        save_figure(rate_distortion(rows), out / "rate_distortion.png"),
        save_figure(validation_curves(rows), out / "validation_curves.png"),
    ]
    shown = shown_side_by_side(rows)
    title = "Reconstructions and prior samples of every run"
    if len(shown) < len(rows):
        title = (
            f"Reconstructions and prior samples: the {len(shown)} of {len(rows)} runs with the "
            "lowest test NLL"
        )
    with tempfile.TemporaryDirectory() as tmp:
        images = fetch_figures(shown, Path(tmp))
        figure = side_by_side(shown, images, title)
        paths.append(save_figure(figure, out / "samples_side_by_side.png"))
    return paths


def compare_runs(experiment: str, sweep: str | None, out: Path) -> None:
    """Write the report of ``experiment``'s runs (of ``sweep`` if given) into ``out``, and log
    it as a comparison run (under `mlflow run -e compare`, the project's run)."""
    import mlflow

    from vaelab.tracking.runs import start_command_run

    rows = collect(experiment, sweep)
    if not rows:
        raise VaelabError(
            f"no runs in experiment {experiment!r}"
            + (f" with tag sweep={sweep!r}" if sweep else "")
            + f" at {mlflow.get_tracking_uri()}: check the names, or MLFLOW_TRACKING_URI"
        )
    paths = write_report(rows, out)
    with start_command_run(experiment, "comparison", sweep):
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="comparison")
    print(table_markdown(rows))
    print(f"report in {out}/ ({len(rows)} runs), logged as a comparison run")
