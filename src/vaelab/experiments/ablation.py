"""The trick ablation as evidence: every trick of the tutorial, one at a time and as its
recipe, at several seeds, with 95% intervals; resumable from the committed results.

    python -m vaelab.experiments.ablation [--only NAME,...] [--plan] [--report]

Every run is one DVC experiment on the ablation profile over the baseline (``baseline.yaml``
beside the results: params.yaml as it was when the ablation started):

    dvc exp run --temp evaluate -n abl-<variant>-s<seed> -S base.seed=<seed> -S <profile...>
        -S <variant's overrides...>

tagged ``sweep=ablation`` in MLflow. The variants are derived from the baseline: each group
(binarization, optimizer, KL weight, ...) lists its alternatives to the baseline's setting.
Adam, RMSprop and SGD each run at their own learning rate, tuned first on a grid at the
first seed by the best validation -ELBO (the test set is not looked at); the grid grows past
an end that wins.

After each run its row is added (a run that fails, e.g. diverges, is recorded as failed with
its error and not retried) to ``docs/ablation/runs.csv`` and the summary, the table and
the figures are rendered again, so a partial table is true. A run is skipped when runs.csv
already holds a row with its params digest (the effective params every stage reads, seed
included): the committed CSV, not a local MLflow store, is what resumes a stopped job.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.params import load_params
from vaelab.core.paths import ABLATION, Artifacts
from vaelab.experiments.ablation_design import (
    BASELINE_FILE,
    BASELINE_SEEDS,
    GRID_GROWTH,
    LEARNING_RATES,
    PROFILE,
    RUN_ORDER,
    SEEDS,
    TUNING_SEED,
    Design,
    Run,
    Variant,
    optimizer_variant,
    snapshot,
    variants,
)
from vaelab.experiments.effects import Summary, same_runs, summarize

OK = "finished"
METRICS = (  # read from the experiment's results: (column, stage, key)
    ("test_nll", "evaluate", "nll"),
    ("test_neg_elbo", "evaluate", "neg_elbo"),
    ("rate", "evaluate", "kl"),
    ("distortion", "evaluate", "reconstruction"),
    ("active_units", "evaluate", "active_units"),
    ("recon_mse_grayscale", "evaluate", "recon_mse_grayscale"),
    ("frechet_distance", "evaluate", "frechet_distance"),
    ("val_neg_elbo", "train", "val_neg_elbo"),
    ("best_epoch", "train", "best_epoch"),
    ("epochs_run", "train", "epochs"),
    ("train_seconds", "train", "train_seconds"),
    ("evaluate_seconds", "evaluate", "seconds"),
)
FINGERPRINT = tuple(name for name, _, _ in METRICS if not name.endswith("_seconds"))
COLUMNS = (
    "status",
    "variant",
    "seed",
    "target",
    "digest",
    "overrides",
    *(name for name, _, _ in METRICS),
    "wall_seconds",
    "commit",
    "cpu",
    "finished",
)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The finished runs; a missing file is an empty ablation."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(COLUMNS) - set(rows[0]):
        missing = ", ".join(sorted(set(COLUMNS) - set(rows[0])))
        raise VaelabError(f"{path} lacks column(s) {missing}: restore it with `git checkout`")
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def finished(rows: list[dict[str, str]], run: Run) -> dict[str, str] | None:
    """A row that answers ``run``: same digest, and evaluated if ``run`` needs evaluating."""
    for row in rows:
        if row["digest"] == run.digest and (run.target == "train" or row["target"] == "evaluate"):
            return row
    return None


def tuning_run(design: Design, name: str, rate: float) -> Run:
    overrides = optimizer_variant(name, rate).overrides
    return design.run(f"tune-{name}-{rate:g}", TUNING_SEED, overrides, "train")


def half_decade(rate: float, steps: int) -> float:
    """``rate`` moved ``steps`` half-decades along 1e-4, 3e-4, 1e-3, 3e-3, ..."""
    k = round(2 * math.log10(rate)) + steps
    return float(f"{10 ** (k / 2):.0e}")


def learning_rate_grid(
    design: Design, rows: list[dict[str, str]], name: str
) -> tuple[list[float], float | None]:
    """The rates ``name`` is tried at, and the one with the lowest validation -ELBO once all
    have run (None before). The grid starts at `LEARNING_RATES` and grows half a decade past
    an end that wins, up to `GRID_GROWTH` rates each way, so the chosen rate has a worse
    neighbour on both sides; a diverged run counts as infinitely bad."""
    start = LEARNING_RATES[name]
    rates = list(start)
    while True:
        scores = {}
        for rate in rates:
            row = finished(rows, tuning_run(design, name, rate))
            if row is None:
                return rates, None
            scores[rate] = float(row["val_neg_elbo"]) if row["status"] == OK else math.inf
        best = min(rates, key=scores.__getitem__)
        if not math.isfinite(scores[best]):
            return rates, None
        if best == rates[0] and rates.index(start[0]) < GRID_GROWTH:
            rates.insert(0, half_decade(best, -1))
        elif best == rates[-1] and len(rates) - 1 - rates.index(start[-1]) < GRID_GROWTH:
            rates.append(half_decade(best, 1))
        else:
            return rates, best


def tuned_rates(design: Design, rows: list[dict[str, str]]) -> dict[str, float]:
    """Each optimizer's chosen rate, once its grid is complete."""
    chosen = {name: learning_rate_grid(design, rows, name)[1] for name in LEARNING_RATES}
    return {name: rate for name, rate in chosen.items() if rate is not None}


def plan(design: Design, rows: list[dict[str, str]], only: set[str] | None = None) -> list[Run]:
    """Every run the ablation needs, in order: the baseline's seeds, then variant by variant
    in `RUN_ORDER` (all seeds of one before the next, so a partial table has whole rows), the
    optimizers' learning-rate tuning and, once it is done, their variants last."""
    chosen = variants(design.base, tuned_rates(design, rows))
    others = sorted(
        (v for v in chosen[1:] if v.group != "optimizer"), key=lambda v: RUN_ORDER.index(v.group)
    )
    tuning = [
        tuning_run(design, name, rate)
        for name in LEARNING_RATES
        for rate in learning_rate_grid(design, rows, name)[0]
    ]
    runs = [design.run("baseline", s, (), "evaluate") for s in design.seeds_of("baseline")]
    for variant in others:
        runs += [design.run(variant.name, s, variant.overrides, "evaluate")
                 for s in design.seeds_of(variant.name)]  # fmt: skip
    runs += tuning
    for variant in (v for v in chosen if v.group == "optimizer"):
        runs += [design.run(variant.name, s, variant.overrides, "evaluate")
                 for s in design.seeds_of(variant.name)]  # fmt: skip
    covered: dict[str, str] = {}  # digest -> target: Adam at the baseline's rate is its run
    unique = []
    for run in runs:
        if covered.get(run.digest) not in ("evaluate", run.target):
            unique.append(run)
            covered[run.digest] = run.target
    runs = unique
    if only:
        tune = "optimizer" in only or any(v.startswith("optimizer-") for v in only)
        runs = [r for r in runs if r.variant in only or (tune and r.variant.startswith("tune-"))]
    return runs


def summaries(design: Design, rows: list[dict[str, str]]) -> list[Summary]:
    """Each variant with at least one finished or failed seed, rows matched by digest (a row
    of an earlier definition of the variant, e.g. another tuned rate, is not counted), and
    the earlier variant whose runs it repeats number for number, if any."""
    evaluated = [r for r in rows if r["target"] == "evaluate"]
    by_digest = {r["digest"]: r for r in evaluated if r["status"] == OK}
    failed = {r["digest"] for r in evaluated if r["status"] != OK}

    def runs_of(variant: Variant) -> list[Run]:
        seeds = design.seeds_of(variant.name)
        return [design.run(variant.name, s, variant.overrides, "evaluate") for s in seeds]

    def rows_of(runs: list[Run]) -> list[dict[str, str]]:
        return [by_digest[r.digest] for r in runs if r.digest in by_digest]

    chosen = variants(design.base, tuned_rates(design, rows))
    baseline = rows_of(runs_of(chosen[0]))
    columns = (
        *(name for name, stage, _ in METRICS if stage == "evaluate"),
        "train_seconds",
        "best_epoch",
    )
    found, seen = [], []
    for variant in chosen:
        runs = runs_of(variant)
        mine = rows_of(runs)
        lost = sum(r.digest in failed for r in runs)
        twin = next((name for name, theirs in seen if same_runs(mine, theirs, FINGERPRINT)), "")
        seen.append((f"{variant.group}: {variant.label}", mine))
        if mine or lost:
            found.append(
                summarize(
                    mine,
                    baseline,
                    columns,
                    failed=lost,
                    name=variant.name,
                    group=variant.group,
                    label=variant.label,
                    metric=variant.metric,
                    same_as=twin,
                )
            )
    return found


def experiment_outputs(
    run: Run, reader: Callable[[str, str], str | None], paths: Artifacts
) -> dict[str, Any]:
    """The run's numbers from the results its experiment committed."""
    found: dict[str, Any] = {}
    files = {"train": paths.train_metrics, "evaluate": paths.evaluate_metrics}
    for stage in ("train", "evaluate") if run.target == "evaluate" else ("train",):
        text = reader(run.experiment, files[stage].as_posix())
        if text is None:
            raise VaelabError(f"experiment {run.experiment} has no {files[stage]}")
        values = json.loads(text)
        found |= {col: values[key] for col, where, key in METRICS if where == stage}
    return found


def failure(text: str) -> str:
    """Why a run failed, as one CSV cell: the stage's own `error:` line (DVC's last line only
    says which stage exited), else the last line of the output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (ours or lines or ["unknown error"])[-1][:300]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_dvc_experiment(run: Run, settings: list[str]) -> None:
    from vaelab.experiments import sweep
    from vaelab.tracking.runs import SWEEP_ENV

    env = {**os.environ, SWEEP_ENV: "ablation"}
    subprocess.run(["dvc", "exp", "remove", run.experiment], capture_output=True, env=env)
    sweep.dvc(
        "exp",
        "run",
        "--temp",
        "-n",
        run.experiment,
        run.target,
        *[a for s in settings for a in ("-S", s)],
        env=env,
    )


def execute(
    design: Design,
    runs: list[Run],
    csv_path: Path,
    launch: Callable[[Run, list[str]], None],
    reader: Callable[[str, str], str | None],
    after: Callable[[list[dict[str, str]]], None],
) -> int:
    """Run what ``csv_path`` does not hold yet, adding each row as it finishes; returns how
    many ran. ``after`` gets the rows after each run (to render the report)."""
    rows = read_rows(csv_path)
    ran = 0
    for index, run in enumerate(runs, 1):
        if finished(rows, run):
            continue
        print(f"[{index}/{len(runs)}] {run.experiment} ({run.target}) ...", flush=True)
        started = time.perf_counter()
        try:
            launch(run, design.settings(run))
            status, outputs = OK, experiment_outputs(run, reader, Artifacts.of(design.base))
        except VaelabError as exc:  # recorded, so that a resumed job does not retry it forever
            status, outputs = f"failed: {failure(str(exc))}", {}
            print(f"{run.experiment} {status}", file=sys.stderr)
        row = {
            "status": status,
            "variant": run.variant,
            "seed": run.seed,
            "target": run.target,
            "digest": run.digest,
            "overrides": " ".join(run.overrides),
            **outputs,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "commit": git_commit(),
            "cpu": cpu_name(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        rows = [*read_rows(csv_path), {c: str(row.get(c, "")) for c in COLUMNS}]
        write_rows(csv_path, rows)
        after(rows)
        ran += 1
    return ran


def header(design: Design, rows: list[dict[str, str]]) -> list[str]:
    """What the table is: profile, seeds, progress, time and machines."""
    base, runs = design.base, plan(design, rows)
    done = sum(finished(rows, run) is not None for run in runs)
    hours = sum(float(row["wall_seconds"]) for row in rows) / 3600
    cpus = "; ".join(sorted({row["cpu"] for row in rows})) or "none yet"
    return [
        f"**Profile**: the baseline is [{BASELINE_FILE}]({BASELINE_FILE}) (`params.yaml` when "
        f"the ablation started) with `{' '.join(design.profile)}`; seeds 1-"
        f"{design.baseline_seeds} for the baseline, 1-{design.seeds} for every variant "
        "(`base.seed` draws the validation split, the test set's binarization, the initial "
        "weights, the shuffling and the binarization and augmentation draws); test NLL with k = "
        f"{base.evaluate.importance_samples} on all {base.prepare.test_size:,} test images.",
        "",
        f"**Progress**: {done} of {len(runs)} runs done ({hours:.1f} h of wall time, "
        f"one run at a time) on {cpus}. Runs still missing leave a row short of seeds or "
        "absent; nothing shown is provisional beyond its seed count.",
        *failures(rows),
    ]


def outcome(row: dict[str, str]) -> str:
    """A failed row's status up to its first sentence's end (runs.csv keeps all of it)."""
    return row["status"].split(". ")[0].rstrip(".")


def failures(rows: list[dict[str, str]]) -> list[str]:
    failed = [f"`abl-{r['variant']}-s{r['seed']}` {outcome(r)}" for r in rows if r["status"] != OK]
    return (
        ["", "**Failed runs** (recorded, not retried): " + "; ".join(failed) + "."]
        if failed
        else []
    )


def tuning(design: Design, rows: list[dict[str, str]]) -> list[list[object]]:
    table = []
    for name in LEARNING_RATES:
        rates, chosen = learning_rate_grid(design, rows, name)
        for rate in rates:
            row = finished(rows, tuning_run(design, name, rate))
            score: float | str | None = None
            if row:
                score = float(row["val_neg_elbo"]) if row["status"] == OK else outcome(row)
            table.append([name, rate, score, "yes" if chosen == rate else ""])
    return table


def main(argv: list[str] | None = None) -> None:
    from vaelab.experiments import sweep
    from vaelab.experiments.ablation_report import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated variant names ('optimizer' = tuning)")
    parser.add_argument("--plan", action="store_true", help="list the runs and what is done")
    parser.add_argument("--report", action="store_true", help="render only, run nothing")
    parser.add_argument("--out", type=Path, default=ABLATION)
    parser.add_argument(
        "--profile",
        action="append",
        help=f"replaces the profile {' '.join(PROFILE)!r} (repeat; -S syntax), for a quick look",
    )
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--baseline-seeds", type=int, default=BASELINE_SEEDS)
    args = parser.parse_args(argv)
    current = load_params()
    fresh = not (args.out / BASELINE_FILE).exists()
    base = current if (args.plan or args.report) and fresh else snapshot(args.out, current)
    profile = tuple(args.profile or PROFILE)
    design = Design(base, profile, args.seeds, args.baseline_seeds, current)
    design.effective(TUNING_SEED, ())  # a bad --profile stops here, before anything runs
    csv_path = args.out / "runs.csv"
    only = set(args.only.split(",")) if args.only else None

    def report(rows: list[dict[str, str]]) -> None:
        render(args.out, summaries(design, rows), header(design, rows), tuning(design, rows))

    if args.plan:
        rows = read_rows(csv_path)
        for run in plan(design, rows, only):
            state = "done" if finished(rows, run) else "to run"
            print(f"{run.experiment:40s} {run.target:9s} {state:7s} {' '.join(run.overrides)}")
        return
    if not args.report:
        # Re-planned until nothing is left: the optimizer variants exist once tuning is done.
        reader = sweep.experiment_file
        while execute(
            design,
            plan(design, read_rows(csv_path), only),
            csv_path,
            run_dvc_experiment,
            reader,
            report,
        ):
            pass
    report(read_rows(csv_path))
    print(f"wrote {args.out / 'ablation.md'}", file=sys.stderr)


if __name__ == "__main__":
    from vaelab.core.cli import run_command

    run_command(main)
