"""Training callbacks: the KL schedule, a resumable per-epoch history, MLflow epoch logging and
early stopping that remembers the epochs before an interruption."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import keras

from vaelab.atomic import write_text
from vaelab.optim import current_learning_rate

# The run's own objective at its target beta: a KL warm-up does not look like overfitting,
# and a beta = 4 run keeps the checkpoint that is best for beta = 4.
MONITOR = "val_objective"


class EpochExtras(keras.callbacks.Callback):
    """Adds beta and learning_rate as applied at the epoch's last step, and epoch_time
    (seconds, validation included), to each epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["beta"] = float(keras.ops.convert_to_numpy(self.model.beta))
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        logs["epoch_time"] = time.perf_counter() - self._started


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a history CSV (``epoch`` is 1-based: epochs completed), or [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows


def history_csv(rows: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {k: v if isinstance(v, int) else f"{v:.7g}" for k, v in row.items()} for row in rows
    )
    return out.getvalue()


class EpochHistory(keras.callbacks.Callback):
    """The per-epoch history, rewritten atomically after every epoch. It lives with the resume
    state, so a resumed run keeps the epochs before the interruption, without duplicates."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.rows = read_history(self.path)

    def on_epoch_begin(self, epoch, logs=None):
        # An epoch recorded here but not in the restored backup is run again: forget it.
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        write_text(self.path, history_csv(self.rows))


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every history row not yet in the MLflow run, with step = epoch. A failed call
    (server away) is retried at the next epoch; what is still unsent at the end is reported
    by `pending`."""

    def __init__(self, history: EpochHistory, run_id: str, logged_upto: int) -> None:
        super().__init__()
        self.history, self.run_id, self.logged_upto = history, run_id, logged_upto

    def pending(self) -> list[dict[str, float]]:
        return [row for row in self.history.rows if row["epoch"] > self.logged_upto]

    def flush(self) -> None:
        from vaelab.outbox import Delivery, send

        rows = self.pending()
        if not rows:
            return
        try:
            send(Delivery(self.run_id, rows=rows))
        except Exception as exc:  # any tracking failure must not stop training
            print(f"warning: MLflow logging failed, will retry: {exc}", file=sys.stderr)
            return
        self.logged_upto = int(rows[-1]["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self.flush()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counts the epochs recorded before a resume, too."""

    def __init__(self, history: EpochHistory, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history = history

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        values = [row[self.monitor] for row in self.history.rows if self.monitor in row]
        if values:
            best = min(range(len(values)), key=values.__getitem__)
            self.best, self.best_epoch = values[best], best
            self.wait = len(values) - 1 - best
