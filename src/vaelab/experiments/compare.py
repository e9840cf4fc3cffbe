"""The report comparing the runs of an MLflow experiment (e.g. a sweep over KL weightings).

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
from vaelab.tracking.compare import COLUMNS, RunRow, collect, fetch_figures, log_comparison

SIDE_BY_SIDE = 40  # runs in the side-by-side figure: 3.2 inches each, far under 2^16 px


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

    rows = collect(experiment, sweep)
    if not rows:
        raise VaelabError(
            f"no runs in experiment {experiment!r}"
            + (f" with tag sweep={sweep!r}" if sweep else "")
            + f" at {mlflow.get_tracking_uri()}: check the names, or MLFLOW_TRACKING_URI"
        )
    paths = write_report(rows, out)
    log_comparison(experiment, sweep, paths)
    print(table_markdown(rows))
    print(f"report in {out}/ ({len(rows)} runs), logged as a comparison run")
