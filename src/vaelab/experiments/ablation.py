"""The trick ablation as evidence: the plan in docs/ablation/variants.yaml, each experiment
run by the experiment runner and recorded in runs.csv beside it, the report rendered again
after every run, so a partial table is true.

    python -m vaelab.experiments.ablation [--only NAME,...] [--list] [--report] [--jobs N]

Every run is one DVC experiment `abl-<variant>-s<seed>`, tagged ``sweep=ablation`` in
MLflow. What runs.csv answers is skipped: the committed file, not a local store, resumes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaelab.core.params import load_params
from vaelab.core.paths import ABLATION
from vaelab.experiments.executor import LocalExecutor
from vaelab.experiments.plan import load_plan
from vaelab.experiments.report import render
from vaelab.experiments.results import answer, job_lock, read_rows
from vaelab.experiments.runner import run_plan

RESULTS = "runs.csv"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ABLATION / "variants.yaml")
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument("--list", action="store_true", help="list the runs and what is done")
    parser.add_argument("--report", action="store_true", help="render only, run nothing")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="experiments at once")
    args = parser.parse_args(argv)
    out, full = args.plan.parent, load_plan(args.plan)  # the report shows every variant
    plan = load_plan(args.plan, set(args.only.split(","))) if args.only else full
    results = out / RESULTS
    if args.list:
        rows = read_rows(results)
        for exp in plan.experiments:
            state = "done" if answer(rows, exp) else "to run"
            print(f"{exp.name:40s} {exp.stage:9s} {state:7s} {exp.overrides}")
        return
    with job_lock(out):
        if not args.report:
            executor, tag = LocalExecutor(args.jobs), ("tracking.sweep=ablation",)
            run_plan(plan, results, executor, load_params(), tag, lambda r: render(out, full, r))
        render(out, full, read_rows(results))
    print(f"wrote {out / 'ablation.md'}", file=sys.stderr)


if __name__ == "__main__":
    from vaelab.core.cli import run_command

    run_command(main)
