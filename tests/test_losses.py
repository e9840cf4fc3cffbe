"""The loss math against NumPy, and the KL schedules at given points of training."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from tests.conftest import committed_params
from vaelab.core.params import KLWeight
from vaelab.model.losses import kl_per_dim, reconstruction_nll, vae_loss
from vaelab.training.kl_schedule import BetaSchedule, beta_at

rng = np.random.default_rng(0)
TARGET = (rng.random((5, 28, 28, 1)) < 0.3).astype(np.float32)
LOGITS = rng.normal(size=(5, 28, 28, 1)).astype(np.float32)
MEAN = rng.normal(size=(5, 3)).astype(np.float32)
LOG_VAR = rng.normal(size=(5, 3)).astype(np.float32) * 0.5


def _np(x):
    return ops.convert_to_numpy(x)


def test_bernoulli_reconstruction_is_summed_bce():
    p = 1 / (1 + np.exp(-LOGITS))
    expected = -(TARGET * np.log(p) + (1 - TARGET) * np.log(1 - p)).reshape(5, -1).sum(1)
    np.testing.assert_allclose(_np(reconstruction_nll(TARGET, LOGITS)), expected, rtol=1e-4)


def test_gaussian_reconstruction_is_negative_log_density():
    sigma, mean = 0.3, 1 / (1 + np.exp(-LOGITS))
    expected = 0.5 * ((TARGET - mean) / sigma) ** 2 + np.log(sigma * np.sqrt(2 * np.pi))
    got = _np(reconstruction_nll(TARGET, LOGITS, "gaussian", sigma))
    np.testing.assert_allclose(got, expected.reshape(5, -1).sum(1), rtol=1e-4)


def test_kl_matches_closed_form_and_vanishes_at_prior():
    expected = 0.5 * (np.exp(LOG_VAR) + MEAN**2 - 1 - LOG_VAR)
    np.testing.assert_allclose(_np(kl_per_dim(MEAN, LOG_VAR)), expected, rtol=1e-5)
    assert np.allclose(_np(kl_per_dim(np.zeros((2, 3)), np.zeros((2, 3)))), 0.0)


@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_loss_parts_add_up(beta):
    kl_dims = kl_per_dim(MEAN, LOG_VAR)
    parts = vae_loss(TARGET, LOGITS, ops.sum(kl_dims, -1), kl_dims, beta)
    parts = {k: float(_np(v)) for k, v in parts.items()}
    assert parts["loss"] == pytest.approx(parts["reconstruction"] + beta * parts["kl"], rel=1e-5)
    assert parts["objective"] == parts["neg_elbo"]  # target beta defaults to 1
    assert parts["neg_elbo"] == pytest.approx(parts["reconstruction"] + parts["kl"], rel=1e-5)


def test_free_bits_floor_holds_per_dimension():
    mean, log_var = np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)
    mean[:, 0] = 3.0  # dimension 0 carries 4.5 nats, the others none
    kl_parts = (ops.sum(kl_per_dim(mean, log_var), -1), kl_per_dim(mean, log_var))
    parts = vae_loss(TARGET[:4], LOGITS[:4], *kl_parts, beta=1.0, free_bits=2.0)
    recon, kl, loss = (float(_np(parts[k])) for k in ("reconstruction", "kl", "loss"))
    assert kl == pytest.approx(4.5)  # the reported KL is never floored
    assert loss - recon == pytest.approx(4.5 + 2.0 + 2.0)  # dims 1, 2 lifted to the floor
    target = vae_loss(TARGET[:4], LOGITS[:4], *kl_parts, beta=0.5, free_bits=2.0, target_beta=3.0)
    assert float(_np(target["objective"])) - recon == pytest.approx(3.0 * 8.5)


def _kl(**kw):
    return KLWeight.model_validate({**committed_params().train.kl.model_dump(), "beta": 2.0, **kw})


@pytest.mark.parametrize(
    ("cfg", "progress", "expected"),
    [
        (_kl(schedule="constant"), 0.0, 2.0),
        (_kl(schedule="linear", warmup=10), 0.0, 0.0),
        (_kl(schedule="linear", warmup=10), 2.5, 0.5),
        (_kl(schedule="linear", warmup=10), 10.0, 2.0),
        (_kl(schedule="linear", warmup=10), 25.0, 2.0),
        # 20 epochs, 4 cycles of 5 epochs, rising over the first half (2.5 epochs)
        (_kl(schedule="cyclical", cycles=4, ratio=0.5), 0.0, 0.0),
        (_kl(schedule="cyclical", cycles=4, ratio=0.5), 1.25, 1.0),
        (_kl(schedule="cyclical", cycles=4, ratio=0.5), 4.0, 2.0),
        (_kl(schedule="cyclical", cycles=4, ratio=0.5), 5.0, 0.0),
        (_kl(schedule="cyclical", cycles=4, ratio=0.5), 16.25, 1.0),
        (_kl(schedule="cyclical", cycles=4, ratio=0.5), 20.0, 2.0),
    ],
)
def test_beta_schedules(cfg, progress, expected):
    assert float(beta_at(cfg, progress, total=20)) == pytest.approx(expected)


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_beta_schedule_counts_optimizer_steps(unit):
    cfg = _kl(schedule="linear", warmup=2 if unit == "epoch" else 20, unit=unit)
    schedule = BetaSchedule(cfg, epochs=5, steps_per_epoch=10)
    assert [float(schedule(step)) for step in (0, 5, 10, 20, 49)] == pytest.approx(
        [0.0, 0.5, 1.0, 2.0, 2.0]
    )


@pytest.mark.parametrize(
    ("kw", "epochs", "settled"),
    [
        ({"schedule": "constant"}, 20, 0),
        ({"schedule": "linear", "warmup": 10}, 20, 10),
        ({"schedule": "linear", "warmup": 25, "unit": "step"}, 20, 3),  # 10 steps an epoch
        # 4 cycles of 5 epochs: the last one's rise ends at 15 + 2.5
        ({"schedule": "cyclical", "cycles": 4, "ratio": 0.5}, 20, 18),
        ({"schedule": "cyclical", "cycles": 4, "ratio": 0.5, "unit": "step"}, 20, 18),
        ({"schedule": "cyclical", "cycles": 4, "ratio": 1.0}, 20, 20),
    ],
)
def test_the_kl_weight_settles_when_its_schedule_last_rises(kw, epochs, settled):
    """The first epoch that starts with beta at its final value (2), as the optimizer's step
    counter gives it: 10 steps an epoch."""
    schedule = BetaSchedule(_kl(**kw), epochs=epochs, steps_per_epoch=10)
    assert schedule.settled_epoch() == settled
    assert [float(schedule(e * 10)) for e in range(settled, epochs + 1)] == pytest.approx(
        [2.0] * (epochs + 1 - settled)
    )
    if settled:
        assert float(schedule((settled - 1) * 10)) < 2.0
