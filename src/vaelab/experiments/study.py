"""A study: a plan (docs/<study>/plan.yaml) whose experiments the runner records in runs.csv
beside it (each a DVC experiment `<prefix>-<arm>-s<seed>`, tagged ``sweep=<prefix>`` in
MLflow), its page rendered after every run. The committed runs.csv, not a local store, says
what is done."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vaelab.core.params import load_params
from vaelab.executors import Executor
from vaelab.experiments import report
from vaelab.experiments.plan import load_plan
from vaelab.experiments.results import job_lock, read_rows
from vaelab.experiments.runner import run_plan

RESULTS = "runs.csv"


def run_study(plan_file: Path, executor: Executor | None, only: set[str] | None = None) -> Path:
    """Run what runs.csv lacks (nothing without an ``executor``), rendering the page as each
    run lands; returns the page."""
    out, full = plan_file.parent, load_plan(plan_file)  # the page shows every arm
    with job_lock(out):
        if executor:
            plan = load_plan(plan_file, only) if only else full
            tag = (f"tracking.sweep={full.spec.prefix}",)
            run_plan(plan, out / RESULTS, executor, load_params(), tag,
                     partial(report.render, out, full))  # fmt: skip
        return report.render(out, full, read_rows(out / RESULTS))
