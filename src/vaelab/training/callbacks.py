"""Training callbacks: beta and learning rate in the logs, a resumable per-epoch history, the
best-model checkpoint, and early stopping and learning-rate cuts on a plateau that remember
the epochs before an interruption."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from vaelab.core.atomic import save_model, write_text
from vaelab.core.errors import TrainingDiverged
from vaelab.core.signals import reraise, uninterrupted
from vaelab.training.history import history_csv, read_history
from vaelab.training.optim import current_learning_rate

# The run's own objective at its target beta: a KL warm-up does not look like overfitting,
# and a beta = 4 run keeps the checkpoint that is best for beta = 4.
MONITOR = "val_objective"


class Backup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore whose epoch-end save is never cut short by Ctrl-C or SIGTERM:
    a half-written backup would load as an empty model (Keras falls back to the previous one
    only on an OSError)."""

    def on_epoch_end(self, epoch, logs=None):
        with uninterrupted():
            super().on_epoch_end(epoch, logs)


class StopOnSignal(keras.callbacks.Callback):
    """Ends the fit at the next batch or epoch once Ctrl-C or SIGTERM has come, even if the
    exception it raised was swallowed inside Keras (see `vaelab.core.signals`)."""

    def on_train_batch_end(self, batch, logs=None):
        reraise()

    def on_test_batch_end(self, batch, logs=None):
        reraise()

    def on_epoch_end(self, epoch, logs=None):
        reraise()


class EpochExtras(keras.callbacks.Callback):
    """Adds beta and learning_rate as applied at the epoch's last step, and epoch_time
    (seconds, validation included), to each epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["beta"] = float(keras.ops.convert_to_numpy(self.model.beta))
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        logs["epoch_time"] = time.perf_counter() - self._started


class StopOnDivergence(keras.callbacks.Callback):
    """Raises `TrainingDiverged` once the loss is NaN or infinite (checked after each graph
    call, every ``steps_per_execution`` steps), keeping the best checkpoint at ``best``."""

    def __init__(self, best: Path) -> None:
        super().__init__()
        self.best, self.epoch = best, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float(keras.ops.convert_to_numpy(logs["loss"]))
        if not np.isfinite(loss):
            raise TrainingDiverged(
                f"loss {loss} in epoch {self.epoch + 1}, at batch {batch}. The best model so "
                f"far is kept in {self.best}. "
                "Lower train.optimizer.learning_rate (or set train.optimizer.clipnorm) and "
                "re-run."
            )


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


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever ``monitor`` reaches a new minimum, atomically: a kill during
    the save leaves the previous best intact (Keras' ModelCheckpoint writes in place)."""

    def __init__(self, path: Path, monitor: str, best: float | None = None) -> None:
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, best

    def on_epoch_end(self, epoch, logs=None):
        value = float(logs[self.monitor])
        if self.best is None or value < self.best:
            save_model(self.model, self.path)
            self.best = value


class Resumable(keras.callbacks.Callback):
    """Mixin for callbacks that watch ``monitor`` from ``start_from_epoch`` on: at the first
    epoch of a fit, the epochs the history recorded before it (a resume's) are handed to
    `replay`, so the callback counts them as it would have without the interruption."""

    def __init__(self, history: EpochHistory, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history, self._replayed = history, False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._replayed:
            self._replayed = True
            done = self.history.rows[self.start_from_epoch : epoch]
            if done:
                self.replay(done)

    def replay(self, rows: list[dict[str, float]]) -> None:
        raise NotImplementedError


class ResumableEarlyStopping(Resumable, keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counts the epochs recorded before a resume, too."""

    def replay(self, rows: list[dict[str, float]]) -> None:
        if self.monitor_op is None:
            self._set_monitor_op()
        for epoch, row in enumerate(rows, self.start_from_epoch):
            if self._is_improvement(row[self.monitor], self.best):  # Keras' test, min_delta too
                self.best, self.best_epoch, self.wait = row[self.monitor], epoch, 0
            else:
                self.wait += 1


class ResumablePlateau(Resumable, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that watches from ``start_from_epoch`` on (Keras' has no such
    argument) and resumes its count: the recorded epochs are replayed through Keras' own
    logic, then the learning rate restored with the optimizer's state is put back."""

    def __init__(self, history: EpochHistory, start_from_epoch: int = 0, **kwargs) -> None:
        super().__init__(history, **kwargs)
        self.start_from_epoch = start_from_epoch

    def replay(self, rows: list[dict[str, float]]) -> None:
        optimizer = self.model.optimizer
        restored = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        for row in rows:
            optimizer.learning_rate = row["learning_rate"]
            super().on_epoch_end(int(row["epoch"]) - 1, {self.monitor: row[self.monitor]})
        optimizer.learning_rate = restored

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.start_from_epoch:
            super().on_epoch_end(epoch, logs)
