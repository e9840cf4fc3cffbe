"""The trick ablation: a plan (docs/ablation/variants.yaml) whose experiments the runner
records in runs.csv beside it (each a DVC experiment `abl-<variant>-s<seed>`, tagged
``sweep=ablation`` in MLflow), the report rendered after every run. The committed runs.csv,
not a local store, says what is done."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vaelab.core.params import load_params
from vaelab.executors import Executor
from vaelab.experiments import claims, report
from vaelab.experiments.plan import load_plan
from vaelab.experiments.results import job_lock, read_rows
from vaelab.experiments.runner import run_plan

RESULTS = "runs.csv"
RENDER = {"ablation": report.render, "claims": claims.render}  # by the plan's `report`


def run_ablation(plan_file: Path, executor: Executor | None, only: set[str] | None = None) -> Path:
    """Run what runs.csv lacks (nothing without an ``executor``), rendering the plan's report
    as each run lands; returns the report page."""
    out, full = plan_file.parent, load_plan(plan_file)  # the report shows every variant
    with job_lock(out):
        if executor:
            plan, tag = load_plan(plan_file, only) if only else full, ("tracking.sweep=ablation",)
            after = partial(RENDER[full.report], out, full)
            run_plan(plan, out / RESULTS, executor, load_params(), tag, after)
        return RENDER[full.report](out, full, read_rows(out / RESULTS))
