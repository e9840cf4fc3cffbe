"""KL weight schedules: beta as a function of training progress, evaluated inside the train
step (from the optimizer's step counter), so changing beta every step costs no Python call."""

from __future__ import annotations

import math

from keras import ops

from vaelab.core.params import KLWeight


def beta_at(cfg: KLWeight, progress, total: float):
    """beta after ``progress`` units (epochs or steps, per ``cfg.unit``) of ``total``.

    constant: beta throughout. linear: 0 -> beta over ``warmup`` units, then beta
    (Bowman et al. 2016). cyclical: ``cycles`` equal cycles over ``total``; in each, beta
    rises linearly over the first ``ratio`` of the cycle and stays at beta for the rest
    (Fu et al. 2019). Works on tensors (in the train step) and on Python numbers.
    """
    progress = ops.cast(progress, "float32")
    if cfg.schedule == "constant":
        return ops.full((), cfg.beta)
    if cfg.schedule == "linear":
        return cfg.beta * ops.minimum(1.0, progress / cfg.warmup)
    period = total / cfg.cycles
    phase = ops.where(progress < total, ops.mod(progress, period) / period, 1.0)
    return cfg.beta * ops.minimum(1.0, phase / cfg.ratio)


class BetaSchedule:
    """Maps the optimizer's step count to beta for a run of ``epochs`` x ``steps_per_epoch``."""

    def __init__(self, cfg: KLWeight, epochs: int, steps_per_epoch: int) -> None:
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.total = epochs if cfg.unit == "epoch" else epochs * steps_per_epoch

    def __call__(self, step):
        progress = ops.cast(step, "float32")
        if self.cfg.unit == "epoch":
            progress = progress / self.steps_per_epoch
        return beta_at(self.cfg, progress, self.total)

    def settled_epoch(self) -> int:
        """The first epoch (counted from 0) that beta starts at its final value for good. Until
        then a rising beta moves the validation -ELBO by itself (a cyclical schedule restarts
        it at 0 each cycle), so early stopping must not read that as a lack of progress."""
        if self.cfg.schedule == "constant":
            return 0
        if self.cfg.schedule == "linear":
            end = self.cfg.warmup
        else:  # the last cycle's rise ends
            period = self.total / self.cfg.cycles
            end = self.total - (1 - self.cfg.ratio) * period
        if self.cfg.unit == "step":
            end /= self.steps_per_epoch
        return math.ceil(end)
