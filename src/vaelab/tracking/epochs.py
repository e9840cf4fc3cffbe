"""Per-epoch MLflow logging during training, which never stops or slows the training."""

from __future__ import annotations

import sys
from typing import Protocol

import keras

from vaelab.core.errors import cause


class Rows(Protocol):
    """The training's per-epoch history (`vaelab.training.callbacks.EpochHistory`)."""

    rows: list[dict[str, float]]


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every history row not yet in the MLflow run, with step = epoch.

    After the first failed call (server away or hanging) it stops trying: the remaining rows
    are reported by `pending` and go into the final delivery, which the outbox keeps if the
    server is still away. One timeout, not one per epoch, on the training thread.
    """

    def __init__(self, history: Rows, run_id: str, logged_upto: int) -> None:
        super().__init__()
        self.history, self.run_id, self.logged_upto = history, run_id, logged_upto
        self.failed = False

    def pending(self) -> list[dict[str, float]]:
        return [row for row in self.history.rows if row["epoch"] > self.logged_upto]

    def flush(self) -> None:
        from vaelab.tracking.outbox import Delivery, send

        rows = self.pending()
        if not rows or self.failed:
            return
        try:
            send(Delivery(self.run_id, rows=rows), set())
        except Exception as exc:  # any tracking failure must not stop training
            self.failed = True
            print(
                f"warning: MLflow logging failed ({cause(exc)}); the epochs "
                "are kept and sent at the end of training (or kept in the outbox)",
                file=sys.stderr,
            )
            return
        self.logged_upto = int(rows[-1]["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self.flush()
