"""Optimizer and learning-rate schedule from the train section of params.yaml."""

from __future__ import annotations

import keras
from keras.optimizers import schedules

from vaelab.core.params import Train


def learning_rate(cfg: Train, steps_per_epoch: int) -> float | schedules.LearningRateSchedule:
    """A constant, or a schedule stepped per optimizer update (decays over cfg.epochs)."""
    lr, sched = cfg.optimizer.learning_rate, cfg.lr_schedule
    if sched.name == "cosine":
        return schedules.CosineDecay(
            lr, decay_steps=cfg.epochs * steps_per_epoch, alpha=sched.min_fraction
        )
    if sched.name == "exponential":
        return schedules.ExponentialDecay(
            lr,
            decay_steps=max(1, round(sched.decay_epochs * steps_per_epoch)),
            decay_rate=sched.decay_rate,
        )
    return lr


def build_optimizer(cfg: Train, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    opt = cfg.optimizer
    lr = learning_rate(cfg, steps_per_epoch)
    if opt.name == "adam":
        return keras.optimizers.Adam(lr, clipnorm=opt.clipnorm)
    if opt.name == "rmsprop":
        return keras.optimizers.RMSprop(lr, momentum=opt.momentum, clipnorm=opt.clipnorm)
    return keras.optimizers.SGD(lr, momentum=opt.momentum, clipnorm=opt.clipnorm)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the optimizer applies now (schedules evaluated at its step count)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
