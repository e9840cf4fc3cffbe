"""Results read back from the experiment itself: the DVC experiment ref of that name under
the current baseline commit (never another baseline's), its params checked against the plan."""

from __future__ import annotations

import json
from typing import Any

import yaml

from vaelab.core.errors import VaelabError
from vaelab.core.git import git
from vaelab.core.overrides import differences, pairs
from vaelab.core.params import Params, validate
from vaelab.core.paths import Artifacts
from vaelab.experiments.plan import RESULTS, STAGES, Experiment
from vaelab.experiments.results import METRICS


def baseline_commit() -> str:
    return git("rev-parse", "HEAD").stdout.strip()


def ref_of(name: str, baseline: str) -> str:
    """Where DVC keeps experiment ``name`` of ``baseline``."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def show(ref: str, path: str) -> str | None:
    shown = git("show", f"{ref}:{path}", check=False)
    return shown.stdout if shown.returncode == 0 else None


def exists(ref: str) -> bool:
    return git("rev-parse", "--verify", "--quiet", ref, check=False).returncode == 0


def mismatch(experiment: Experiment, ref: str) -> str:
    """What the experiment at ``ref`` ran differently from the plan ('' if nothing)."""
    text = show(ref, "params.yaml")
    if text is None:
        return "it has no params.yaml"
    try:
        ran: Params = validate(yaml.safe_load(text), f"{ref}:params.yaml")
    except (VaelabError, yaml.YAMLError):
        return "a params.yaml this version does not accept"
    wrong = differences(ran, experiment.params, (*RESULTS, "base"))
    wrong.pop("base.experiment", None)
    return " ".join(pairs(wrong))


def outputs(experiment: Experiment, ref: str) -> dict[str, Any]:
    """The experiment's metrics as results columns, once its params are the plan's."""
    wrong = mismatch(experiment, ref)
    if wrong:
        raise VaelabError(f"experiment {experiment.name} did not run the plan: it has {wrong}")
    paths = Artifacts.of(experiment.params)
    files = {"train": paths.train_metrics, "evaluate": paths.evaluate_metrics}
    found: dict[str, Any] = {}
    for stage, path in files.items():
        if STAGES.index(stage) > STAGES.index(experiment.stage):
            continue
        text = show(ref, path.as_posix())
        if text is None:
            raise VaelabError(f"experiment {experiment.name} has no {path}")
        values = json.loads(text)
        found |= {col: values[key] for col, where, key in METRICS if where == stage}
    return found


def drop(ref: str) -> None:
    """Delete an experiment ref (an earlier definition of the same name)."""
    git("update-ref", "-d", ref)
