"""The trick ablation as evidence: a plan (docs/ablation/variants.yaml), each experiment run
by the experiment runner and recorded in runs.csv beside it, the report rendered again after
every run, so a partial table is true.

Every run is one DVC experiment `abl-<variant>-s<seed>`, tagged ``sweep=ablation`` in
MLflow. What runs.csv answers is skipped: the committed file, not a local store, resumes it.
"""

from __future__ import annotations

from pathlib import Path

from vaelab.core.params import load_params
from vaelab.experiments.executor import Executor
from vaelab.experiments.plan import load_plan
from vaelab.experiments.report import render
from vaelab.experiments.results import answer, job_lock, read_rows
from vaelab.experiments.runner import run_plan

RESULTS = "runs.csv"


def listing(plan_file: Path, only: set[str] | None = None) -> str:
    """Every run of the plan, its stage, whether runs.csv answers it, and its overrides."""
    rows = read_rows(plan_file.parent / RESULTS)
    return "\n".join(
        f"{e.name:40s} {e.stage:9s} {'done' if answer(rows, e) else 'to run':7s} {e.overrides}"
        for e in load_plan(plan_file, only).experiments
    )


def run_ablation(plan_file: Path, executor: Executor | None, only: set[str] | None = None) -> Path:
    """Run what runs.csv lacks (nothing without an ``executor``), rendering the report as each
    run lands; returns the report page."""
    out, full = plan_file.parent, load_plan(plan_file)  # the report shows every variant
    with job_lock(out):
        if executor:
            plan, tag = load_plan(plan_file, only) if only else full, ("tracking.sweep=ablation",)
            run_plan(
                plan, out / RESULTS, executor, load_params(), tag, lambda r: render(out, full, r)
            )
        render(out, full, read_rows(out / RESULTS))
    return out / "ablation.md"
