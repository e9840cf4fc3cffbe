"""One runner for every study (a sweep, a plan): the plan's experiments not answered yet
go to an executor, and each that finishes is collected from its experiment and recorded.
Only a diverged training is a result (its epochs kept from its MLflow run, since DVC commits
no experiment for a failed stage); any other failure (a server down, a full disk, a
killed stage) stops the job with its cause and records nothing: the same command resumes."""

from __future__ import annotations

import functools
import os
import platform
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from vaelab.core.atomic import write_text
from vaelab.core.errors import DIVERGED, VaelabError, cause
from vaelab.core.git import git
from vaelab.core.overrides import differences, pairs
from vaelab.core.params import Params
from vaelab.executors import Executor, Job
from vaelab.experiments import results
from vaelab.experiments.plan import Experiment, Plan
from vaelab.experiments.results import OK, Rows, answers, append_row, read_rows
from vaelab.training.history import history_csv


@functools.cache
def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def failure(log: str) -> str:
    """Why a run failed, in one line: the stage's own `error:` line (DVC's last line only says
    which stage exited), else DVC's last `ERROR:` line, else the last line of the output."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    dvc = [line for line in lines if line.startswith("ERROR: ")]
    return (ours or dvc or lines or ["unknown error"])[-1][:300]


def pending(plan: Plan, rows: Rows, reruns: bool = True) -> list[Experiment]:
    """The experiments without a row, each once, less those another of them answers (a tuning
    run at the baseline's rate is the baseline's run); then (``reruns``) each reference run
    that a run of an arm on this machine needs as its pair, if it has none here: a pair is
    two runs of one CPU model and code version."""

    unique = {e.key: e for e in reversed(plan.experiments)}
    todo = [e for e in plan.experiments if unique[e.key] is e and not answers(rows, e)]
    todo = [e for e in todo if not any(o is not e and e.answered_by(o.row()) for o in todo)]
    if not reruns:
        return todo
    cpu, code = cpu_name(), results.code_version(results.baseline_commit())
    runs_here = {e.key for e in todo}

    def here(exp: Experiment) -> bool:  # it runs, or ran, on this CPU model and code
        now = plan.where(exp, cpu, code)
        return exp.key in runs_here or any(
            plan.where(exp, r["cpu"], r["code"]) == now for r in answers(rows, exp)
        )

    by_run = {(e.arm, e.factor, e.seed): e for e in plan.experiments}
    for exp in plan.experiments:
        against = plan.arm(exp.arm).against
        ref = by_run.get((against, exp.factor, exp.seed)) if against else None
        if ref is not None and here(exp) and not here(ref):
            todo.append(unique[ref.key])  # the reference's seed runs again here
            runs_here.add(ref.key)
    return todo


def run_plan(
    plan: Plan,
    file: Path,
    executor: Executor,
    current: Params,
    extra: Iterable[str] = (),
    after: Callable[[Rows], None] = lambda rows: None,
) -> int:
    """Run what the results ``file`` lacks, adding a row as each finishes (``after`` gets the
    rows then); returns how many were recorded. The caller holds ``job_lock`` on its folder."""
    baseline = results.baseline_commit()
    executor.gather(baseline)  # experiments that finished elsewhere, e.g. before a restart
    rows = read_rows(file)
    todo = pending(plan, rows)
    by_name = {e.name: e for e in todo}
    recorded, jobs = 0, []
    for exp in todo:
        ref = results.ref_of(exp.name, baseline)
        if results.exists(ref):
            if not results.mismatch(exp, ref) and not answers(rows, exp):
                after(_record(file, exp, ref, 0.0))  # it finished, its row was lost
                recorded += 1
                continue
            git("update-ref", "-d", ref)  # an earlier definition of this name, or a rerun
        sets = pairs(differences(exp.params, current))  # -S over params.yaml as it is
        jobs.append(Job(exp.name, exp.stage, (*sets, *extra)))
    for index, outcome in enumerate(executor.run(jobs), 1):
        exp = by_name[outcome.job.name]
        state = f"{'done' if outcome.ok else 'failed'} in {outcome.seconds:.0f} s"
        print(f"[{index}/{len(jobs)}] {exp.name}: {state}", file=sys.stderr, flush=True)
        if not outcome.ok and DIVERGED not in outcome.log:
            raise VaelabError(
                f"experiment {exp.name} failed, not by a diverging training, so nothing "
                f"is recorded and the job stops: {failure(outcome.log)}\nFix the cause and "
                "run the same command again: what finished is kept."
            )
        error = "" if outcome.ok else failure(outcome.log)
        after(_record(file, exp, results.ref_of(exp.name, baseline), outcome.seconds, error))
        recorded += 1
    return recorded


def _record(file: Path, exp: Experiment, ref: str, seconds: float, error: str = "") -> Rows:
    """Append ``exp``'s row: its numbers (and history) from ``ref``, or the ``error`` it
    diverged with."""
    numbers = {} if error else results.outputs(exp, ref)
    if numbers:
        results.keep_history(file.parent, exp, ref)
    elif error:
        _keep_epochs_before_divergence(file.parent, exp)
    return append_row(
        file,
        {
            "status": f"failed: {error}" if error else OK,
            "arm": exp.arm,
            "seed": exp.seed,
            "target": exp.stage,
            "overrides": exp.overrides,
            **numbers,
            "wall_seconds": round(seconds, 1),
            "baseline": exp.baseline,
            "commit": "".join(ref.split("/")[2:4])[:7],
            "code": results.code_version(ref if results.exists(ref) else results.baseline_commit()),
            "cpu": cpu_name(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def _keep_epochs_before_divergence(folder: Path, exp: Experiment) -> None:
    """A diverged experiment's history, from its MLflow run (DVC committed none); a store
    that does not answer costs the history only, with a warning."""
    from vaelab.tracking.runs import recorded_epochs
    from vaelab.tracking.store import connect

    try:
        connect()
        rows = recorded_epochs(exp.name)
    except Exception as exc:  # the row is the result; its epochs are a bonus
        print(f"warning: the epochs of {exp.name} are not kept: {cause(exc)}", file=sys.stderr)
        return
    if rows:
        write_text(results.history_file(folder, exp), history_csv(rows))
