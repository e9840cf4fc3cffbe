"""A study's results: each read back from its experiment (the DVC experiment ref of that name
under the current baseline commit, never another baseline's, its params checked against the
plan) into the results file, one CSV row per experiment, appended atomically by the one job
that holds the folder's lock; each finished run's per-epoch history is kept beside it. A row
names the CPU and the version of the code that made its numbers (`code_version`)."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import yaml

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.git import git
from vaelab.core.lock import exclusive
from vaelab.core.overrides import differences, pairs
from vaelab.core.params import validate
from vaelab.core.paths import Artifacts
from vaelab.experiments.measures import METRICS
from vaelab.experiments.plan import RESULTS, STAGES, Experiment

OK = "finished"
Rows = list[dict[str, str]]  # a results file's rows, as read
COLUMNS = ("status", "arm", "seed", "target", "overrides", *METRICS, "wall_seconds",
           "baseline", "commit", "code", "cpu", "finished")  # fmt: skip
LOCK = ".job.lock"
HISTORIES = "histories"  # <folder>/histories/<experiment>.csv: each finished run's epochs


def read_rows(path: Path) -> Rows:
    """The recorded runs; a missing file is a job that has not started."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise VaelabError(
                f"{path} lacks column(s) {', '.join(sorted(missing))}: it is not a results "
                "file of this version; restore it with `git checkout` or move it away"
            )
        return list(reader)


def append_row(path: Path, row: dict[str, Any]) -> Rows:
    """Add ``row`` to ``path`` (a complete new file replaces the old); returns all rows."""
    rows = [*read_rows(path), {c: str(row.get(c, "")) for c in COLUMNS}]
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())
    return rows


def answers(rows: Rows, experiment: Experiment) -> Rows:
    """The rows that answer ``experiment`` (one per CPU model and code version it ran on)."""
    return [r for r in rows if experiment.answered_by(r)]


def answer(rows: Rows, experiment: Experiment) -> dict[str, str] | None:
    """The first row that answers ``experiment``."""
    return next(iter(answers(rows, experiment)), None)


def job_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``folder`` for this job alone (a killed job never keeps it)."""
    busy = (f"another job is writing to {folder} (process {{pid}}): wait for it to finish, or "
            "give this one another output folder")  # fmt: skip
    return exclusive(folder, busy, LOCK)


def baseline_commit() -> str:
    return git("rev-parse", "HEAD").stdout.strip()


def ref_of(name: str, baseline: str) -> str:
    """Where DVC keeps experiment ``name`` of ``baseline``."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


@functools.cache
def code_version(commit: str) -> str:
    """The version of the code that makes a run's numbers at ``commit``: a digest of the git
    trees of the code its result stages depend on there (their `src/` deps in that commit's
    dvc.yaml), so rows committed one by one on a moving branch share it until that code
    changes."""
    shown = show(commit, "dvc.yaml")
    stages = yaml.safe_load(shown)["stages"] if shown else {}
    deps = {str(d) for name in RESULTS if name in stages for d in stages[name].get("deps", [])}
    deps = sorted(d for d in deps if d.startswith("src/")) or ["src"]
    listing = git("ls-tree", "-r", commit, "--", *deps).stdout
    return hashlib.sha1(listing.encode(), usedforsecurity=False).hexdigest()[:7]


def show(ref: str, path: str) -> str | None:
    """``path`` as committed in ``ref``; None if either is absent."""
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
        ran = validate(yaml.safe_load(text), f"{ref}:params.yaml")
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
    found: dict[str, Any] = {}
    for stage, path in (("train", paths.train_metrics), ("evaluate", paths.evaluate_metrics)):
        if STAGES.index(stage) <= STAGES.index(experiment.stage):
            text = show(ref, path.as_posix())
            if text is None:
                raise VaelabError(f"experiment {experiment.name} has no {path}")
            values = json.loads(text)
            found |= {name: values[name] for name, m in METRICS.items() if m.stage == stage}
    return found


def keep_history(folder: Path, experiment: Experiment, ref: str) -> None:
    """Copy the experiment's per-epoch history from ``ref`` into ``folder``'s histories."""
    text = show(ref, Artifacts.of(experiment.params).train_history.as_posix())
    if text is None:
        raise VaelabError(f"experiment {experiment.name} has no training history")
    write_text(history_file(folder, experiment), text)


def history_file(folder: Path, experiment: Experiment) -> Path:
    return folder / HISTORIES / f"{experiment.name}.csv"
