"""A sweep: a grid of params overrides, each point a DVC experiment `<name>-<i>-s<seed>` run
by the experiment runner under one MLflow parent run (both travel in the experiment's params,
so two sweeps never mix), then compared, and the best registered as the champion. Its
baseline, experiments.csv, study page and comparison go to reports/sweeps/<name>/; the same
command resumes."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import yaml

from vaelab.core.errors import VaelabError
from vaelab.core.overrides import pairs, split_override
from vaelab.core.params import load_params
from vaelab.core.paths import REPORTS, Artifacts
from vaelab.executors import Executor
from vaelab.experiments import report
from vaelab.experiments.plan import NAME, ArmSpec, Plan, PlanSpec, plan_of
from vaelab.experiments.results import baseline_commit, job_lock, read_rows, ref_of, show
from vaelab.experiments.runner import run_plan

SWEEP_RESULTS = "experiments.csv"  # beside the comparison's runs.csv (MLflow's view)


def grid(values: list[str]) -> list[dict[str, object]]:
    """Every combination of ``-S KEY=V1,V2,...`` values (YAML, as DVC reads them)."""
    axes = [[(k, v) for v in yaml.safe_load(f"[{c}]")] for k, c in map(split_override, values)]
    return [dict(point) for point in itertools.product(*axes)]


def sweep_plan(name: str, values: list[str], folder: Path, seed: int) -> Plan:
    arms = [
        ArmSpec(name=str(i), group="sweep", label=" ".join(pairs(p)), set=p)
        for i, p in enumerate(grid(values), 1)
    ]
    spec = PlanSpec(title=f"Sweep {name}", prefix=name, base="baseline.yaml", seeds=[seed],
                    stage="figures", arms=arms)  # fmt: skip
    return plan_of(spec, folder, f"sweep {name}")


def run_sweep(name: str, values: list[str], executor: Executor, out: Path | None = None) -> str:
    """Run the grid of ``values``, compare its runs, promote the best; returns what the
    registry did."""
    import mlflow

    from vaelab.experiments.compare import compare_runs
    from vaelab.tracking.registry import promote
    from vaelab.tracking.runs import start_command_run
    from vaelab.tracking.store import connect

    if not re.fullmatch(NAME, name):
        raise VaelabError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    folder, params = out or REPORTS / "sweeps" / name, load_params()
    with job_lock(folder):
        plan = sweep_plan(name, values, folder, params.base.seed)
        connect(require=True)
        overrides = {"sweep.overrides": " ".join(values)}  # a restarted sweep resumes its run
        with start_command_run(params.base.experiment, "sweep", name, folder, overrides) as parent:
            extra = (f"tracking.sweep={name}", f"tracking.parent_run={parent.info.run_id}")
            run_plan(plan, folder / SWEEP_RESULTS, executor, params, extra)
            # DVC restores a training it has run before instead of running it: tag that run.
            baseline, run_file = baseline_commit(), Artifacts.of(params).train_run
            for exp in plan.experiments:
                text = show(ref_of(exp.name, baseline), run_file.as_posix())
                if text:
                    mlflow.MlflowClient().set_tag(json.loads(text)["run_id"], "sweep", name)
        report.render(folder, plan, read_rows(folder / SWEEP_RESULTS), SWEEP_RESULTS)
        compare_runs(params.base.experiment, name, folder)
        return promote(params.base.experiment, sweep=name)
