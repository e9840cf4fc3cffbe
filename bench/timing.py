"""A Keras callback that records each epoch's wall time (shared by the benchmark scripts)."""

from __future__ import annotations

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """``times``: seconds of every epoch so far."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._started)
