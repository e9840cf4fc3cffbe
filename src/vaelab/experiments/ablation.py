"""The trick ablation as evidence: the plan in docs/ablation/variants.yaml, each experiment
run by the experiment runner and recorded in runs.csv beside it, the report rendered again
after every run, so a partial table is true.

    python -m vaelab.experiments.ablation [--only NAME,...] [--list] [--report] [--jobs N]

Every run is one DVC experiment `abl-<variant>-s<seed>`, tagged ``sweep=ablation`` in
MLflow. What runs.csv answers is skipped: the committed file, not a local store, resumes it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tabulate import tabulate

from vaelab.core.atomic import write_text
from vaelab.core.params import load_params
from vaelab.core.paths import ABLATION
from vaelab.experiments import report
from vaelab.experiments.executor import LocalExecutor
from vaelab.experiments.plan import Plan, load_plan
from vaelab.experiments.results import OK, answer, job_lock, read_rows
from vaelab.experiments.runner import run_plan
from vaelab.report.plots import save_figure

PLAN, RESULTS, README = "variants.yaml", "runs.csv", Path("README.md")


def header(plan: Plan, rows: list[dict[str, str]]) -> list[str]:
    """What the table is: the plan, progress, time, machines and failures."""
    done = sum(answer(rows, e) is not None for e in plan.experiments)
    hours = sum(float(row["wall_seconds"]) for row in rows) / 3600
    cpus = "; ".join(sorted({row["cpu"] for row in rows})) or "none yet"
    failed = [
        f"`abl-{r['variant']}-s{r['seed']}` {report.outcome(r)}" for r in rows if r["status"] != OK
    ]
    return [
        f"**Plan**: [{PLAN}]({PLAN}) over [baseline.yaml](baseline.yaml); test NLL with k = "
        f"{plan.base.evaluate.importance_samples} on all {plan.base.prepare.test_size:,} test "
        "images. `base.seed` draws the validation split, the test set's binarization, the "
        "initial weights, the shuffling and the binarization and augmentation draws.",
        "",
        f"**Progress**: {done} of {len(plan.experiments)} runs done ({hours:.1f} h of wall "
        f"time) on {cpus}.",
        *(
            ["", "**Failed runs** (diverged: a result): " + "; ".join(failed) + "."]
            if failed
            else []
        ),
    ]


def render(out: Path, plan: Plan, rows: list[dict[str, str]]) -> None:
    """summary.csv, both figures, ablation.md's generated part and, for the committed
    ablation, the README's tricks table."""
    found = report.summaries(plan, rows)
    write_text(out / "summary.csv", report.summary_csv(found))
    table = report.tricks_table(list(csv.DictReader((out / "summary.csv").open())))
    save_figure(report.forest(found), out / "forest.png")
    save_figure(report.rate_distortion(found), out / "rate_distortion.png")
    tuning = tabulate(
        report.tuning(plan, rows),
        ["optimizer", "learning rate", "validation -ELBO", "chosen"],
        tablefmt="github",
        missingval="",
    )
    generated = "\n".join(
        [
            *header(plan, rows),
            "",
            table,
            "![forest plot](forest.png)",
            "",
            "![rate-distortion plane](rate_distortion.png)",
            "",
            "In numbers: [summary.csv](summary.csv); every run: [runs.csv](runs.csv).",
            "",
            "### Learning rates of the optimizers (seed 1, validation -ELBO)",
            "",
            tuning,
            "",
        ]
    )
    page = out / "ablation.md"
    text = (
        page.read_text()
        if page.exists()
        else "# The trick ablation\n\n"
        + "\n".join((report.START.format("ablation"), report.END.format("ablation"), ""))
    )
    write_text(page, report.replace_section(text, "ablation", generated))
    if out.resolve() == ABLATION.resolve() and README.exists():
        readme = README.read_text()
        write_text(README, report.replace_section(readme, "tricks", table))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ABLATION / PLAN, help="the plan file")
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument("--list", action="store_true", help="list the runs and what is done")
    parser.add_argument("--report", action="store_true", help="render only, run nothing")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="experiments at once")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    plan, out = load_plan(args.plan, only), args.plan.parent
    results = out / RESULTS
    if args.list:
        rows = read_rows(results)
        for exp in plan.experiments:
            state = "done" if answer(rows, exp) else "to run"
            print(f"{exp.name:40s} {exp.stage:9s} {state:7s} {exp.overrides}")
        return
    full = load_plan(args.plan)  # the report covers every variant, whatever --only ran
    with job_lock(out):
        if not args.report:
            run_plan(
                plan,
                results,
                LocalExecutor(args.jobs),
                load_params(),
                ("tracking.sweep=ablation",),
                lambda rows: render(out, full, rows),
            )
        render(out, full, read_rows(results))
    print(f"wrote {out / 'ablation.md'}", file=sys.stderr)


if __name__ == "__main__":
    from vaelab.core.cli import run_command

    run_command(main)
