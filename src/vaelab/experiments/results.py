"""A job's results file: one CSV row per finished experiment, appended atomically by the one
job that holds the folder's lock."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any

from vaelab.core.atomic import write_text
from vaelab.core.errors import VaelabError
from vaelab.core.lock import exclusive
from vaelab.experiments.plan import Experiment

OK = "finished"
Rows = list[dict[str, str]]  # a results file's rows, as read
METRICS = (  # read from the experiment's committed results: (column, stage, key)
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
COLUMNS = ("status", "variant", "seed", "target", "overrides", *(m for m, _, _ in METRICS),
           "wall_seconds", "commit", "cpu", "finished")  # fmt: skip
LOCK = ".job.lock"


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


def answer(rows: Rows, experiment: Experiment) -> dict[str, str] | None:
    """The row that answers ``experiment``: same seed and effective overrides, a stage as far."""
    return next(
        (r for r in rows if experiment.answered_by(int(r["seed"]), r["overrides"], r["target"])),
        None,
    )


def job_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``folder`` for this job alone (a killed job never keeps it)."""
    busy = (f"another job is writing to {folder} (process {{pid}}): wait for it to finish, or "
            "give this one another output folder")  # fmt: skip
    return exclusive(folder, busy, LOCK)
