"""The report comparing the runs of an MLflow experiment (e.g. a sweep over KL weightings).

    vaelab compare [--sweep NAME] [--out reports/compare]

A command rather than a DVC stage: its input is the MLflow store, which DVC cannot hash, so
as a stage it would be either always stale or always re-run. It writes a table (CSV and
Markdown, the stages' own metric names), and with the study renderer's figures the
rate-distortion plane, reconstructions and prior samples of every run side by side and the
validation curves overlaid; then logs them as a `comparison` run. Runs that failed or lack a
metric are listed with the gap shown as missing.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.experiments import figures
from vaelab.report.plots import save_figure
from vaelab.tracking.search import LoggedRun, collect, fetch_figures, log_comparison

SIDE_BY_SIDE = 40  # runs in the side-by-side figure: 3.2 inches each, far under 2^16 px
# the evaluate stage's names; MLflow's have a test_ prefix
SHOWN = ("nll", "neg_elbo", "reconstruction", "kl", "active_units", "latent_accuracy",
         "frechet_distance")  # fmt: skip
COLUMNS = [  # (header, where, key)
    ("run", "info", "run_name"),
    ("status", "info", "status"),
    ("beta", "params", "train.kl.beta"),
    ("schedule", "params", "train.kl.schedule"),
    ("free_bits", "params", "train.kl.free_bits"),
    ("prior", "params", "train.prior.kind"),
    *((name, "metrics", f"test_{name}") for name in SHOWN),
    ("epochs", "tags", "epochs_run"),
    ("train_seconds", "metrics", "train_seconds"),
]


@dataclass
class RunRow:
    run_id: str
    values: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def of(cls, run: LoggedRun) -> RunRow:
        return cls(run.run_id, {h: run.fields[w].get(k) for h, w, k in COLUMNS}, run.curve)

    def number(self, header: str) -> float | None:
        try:
            number = float(self.values.get(header))
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    @property
    def label(self) -> str:
        return f"beta={self.values.get('beta') or '?'} {self.values.get('schedule') or ''}".strip()


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


def rate_distortion(rows: list[RunRow]):
    pairs = [(r.label, r.number("kl"), r.number("reconstruction")) for r in rows]
    points = [figures.RatePoint(*p) for p in pairs if None not in p]
    missing = len(rows) - len(points)
    title = "Rate-distortion of the runs" + (
        f"; {missing} run(s) without metrics not shown" if missing else ""
    )
    return figures.rate_distortion(points, title)


def shown_side_by_side(rows: list[RunRow]) -> list[RunRow]:
    """The runs the side-by-side figure has room for: all, or the SIDE_BY_SIDE of lowest test
    NLL (a figure must stay under matplotlib's 2^16 pixels a side)."""
    if len(rows) <= SIDE_BY_SIDE:
        return rows
    return sorted(rows, key=lambda r: (r.number("nll") is None, r.number("nll") or 0))[
        :SIDE_BY_SIDE
    ]


def side_by_side(rows: list[RunRow], images: dict[str, dict[str, Path | None]], title: str):
    return figures.side_by_side([(r.label, images[r.run_id]) for r in rows], title)


def write_report(rows: list[RunRow], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "runs.csv", table_csv(rows))
    write_text(out / "runs.md", table_markdown(rows))
    curves = figures.overlaid_curves([(r.label, r.curve) for r in rows if r.curve])
    paths = [out / "runs.csv", out / "runs.md",
             save_figure(rate_distortion(rows), out / "rate_distortion.png"),
             save_figure(curves, out / "validation_curves.png")]  # fmt: skip
    shown = shown_side_by_side(rows)
    title = "Reconstructions and prior samples of every run"
    if len(shown) < len(rows):
        title = (f"Reconstructions and prior samples: the {len(shown)} of {len(rows)} runs with "
                 "the lowest test NLL")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        images = fetch_figures([r.run_id for r in shown], Path(tmp))
        paths.append(save_figure(side_by_side(shown, images, title),
                                 out / "samples_side_by_side.png"))  # fmt: skip
    return paths


def compare_runs(experiment: str, sweep: str | None, out: Path) -> None:
    """Write the report of ``experiment``'s runs (of ``sweep`` if given) into ``out``, and log
    it as a comparison run (under `mlflow run -e compare`, the project's run)."""
    rows = [RunRow.of(run) for run in collect(experiment, sweep)]
    if not rows:
        raise VaelabError(
            f"no runs in experiment {experiment!r}"
            + (f" with tag sweep={sweep!r}" if sweep else "")
            + ": check the names, or MLFLOW_TRACKING_URI"
        )
    paths = write_report(rows, out)
    log_comparison(experiment, sweep, paths)
    print(table_markdown(rows))
    print(f"report in {out}/ ({len(rows)} runs), logged as a comparison run")
