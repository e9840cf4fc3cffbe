"""Evaluation maths on constructed models with known answers, and the stages on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from keras import layers

from vaelab.evaluation.frechet import frechet_distance
from vaelab.evaluation.latent import activity, is_active
from vaelab.evaluation.likelihood import estimate
from vaelab.model.prior import MixturePrior
from vaelab.model.vae import VAE

DIM = 3


def _constant_vae(
    mean: float, log_var: float, pixel_logit: np.ndarray, varying_dim0: bool = False
) -> VAE:
    """q(z|x) = N(mean, exp(log_var)) (dim 0 optionally depends on x); the decoder ignores z
    and emits fixed per-pixel logits, so p(x) = p(x|z) is known in closed form."""
    image = keras.Input((28, 28, 1))
    flat = layers.Flatten()(image)
    kernel = np.zeros((784, DIM), np.float32)
    if varying_dim0:
        kernel[:, 0] = 1.0 / 784
    z_mean = layers.Dense(
        DIM,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(mean),
    )(flat)
    z_log_var = layers.Dense(
        DIM, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(log_var)
    )(flat)
    encoder = keras.Model(image, [z_mean, z_log_var])
    z = keras.Input((DIM,))
    logits = layers.Dense(
        784, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(pixel_logit)
    )(z)
    decoder = keras.Model(z, layers.Reshape((28, 28, 1))(logits))
    return VAE(encoder, decoder, seed=0)


@pytest.fixture(scope="module")
def binary_images():
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.05, 0.95, 784).astype(np.float32)
    x = (rng.random((200, 784)) < probs).astype(np.float32).reshape(-1, 28, 28, 1)
    logit = np.log(probs / (1 - probs))
    true_nll = -(
        x.reshape(200, -1) * np.log(probs) + (1 - x.reshape(200, -1)) * np.log(1 - probs)
    ).sum(1)
    return x, logit, true_nll


@pytest.mark.parametrize("k", [1, 7, 64])
def test_nll_exact_when_posterior_is_prior(binary_images, k):
    x, logit, true_nll = binary_images
    est = estimate(_constant_vae(0.0, 0.0, logit), x, k, batch_size=64, chunk=5, progress=False)
    np.testing.assert_allclose(est.nll, true_nll, rtol=1e-4)
    np.testing.assert_allclose(est.kl, 0.0, atol=1e-6)


def test_bound_tightens_with_k_towards_true_likelihood(binary_images):
    x, logit, true_nll = binary_images
    # q = N(0.5, 1.5): wider than the prior, so the importance weights are bounded.
    vae = _constant_vae(0.5, math.log(1.5), logit)
    per_image = {
        k: estimate(vae, x, k, chunk=50, progress=False).nll - true_nll for k in (1, 10, 100, 1000)
    }
    gaps = {k: float(g.mean()) for k, g in per_image.items()}
    # k=1 is a one-sample ELBO: unbiased for a gap of KL(q || p), i.e.
    # DIM * 0.5 * (1.5 + 0.25 - 1 - ln 1.5); allow four standard errors.
    sem = per_image[1].std() / math.sqrt(len(x))
    assert abs(gaps[1] - DIM * 0.5 * (0.75 - math.log(1.5))) < 4 * sem
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] > -0.01
    assert gaps[1000] < 0.02 * gaps[1]


def test_elbo_parts_of_the_estimator(binary_images):
    x, logit, true_nll = binary_images
    est = estimate(_constant_vae(1.0, 0.0, logit), x, 5, progress=False)
    np.testing.assert_allclose(est.reconstruction, true_nll, rtol=1e-4)
    np.testing.assert_allclose(est.kl_per_dim, 0.5, rtol=1e-5)  # 0.5 * mean^2 per dim


def test_active_units_and_kl_per_dim_on_constructed_encoder(binary_images):
    x, logit, _ = binary_images
    x = x * np.linspace(0.1, 1.0, len(x), dtype=np.float32)[:, None, None, None]
    est = estimate(_constant_vae(0.5, 0.0, logit, varying_dim0=True), x, 2, progress=False)
    act = activity(est.z_mean)
    assert act[0] > 0.01 and np.allclose(act[1:], 0.0)
    assert is_active(act).tolist() == [True, False, False]
    np.testing.assert_allclose(est.kl_per_dim[:, 1:], 0.5 * 0.25, rtol=1e-5)


def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    a = np.random.default_rng(0).normal(size=(3000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(a, a + s) for s in (0.1, 0.5, 1.0)]
    assert shifts == pytest.approx([8 * s**2 for s in (0.1, 0.5, 1.0)], rel=1e-6)
    assert shifts[0] < shifts[1] < shifts[2]


@pytest.mark.slow
def test_stages_write_metrics_figures_and_log_into_the_training_run(tiny_workdir):
    from vaelab.core.paths import Artifacts
    from vaelab.stages.classifier import main as classifier_stage
    from vaelab.stages.evaluate import main as evaluate_stage
    from vaelab.stages.figures import main as figures_stage
    from vaelab.training.loop import train

    params = tiny_workdir(epochs=2).replace(
        {
            "classifier": {"train_images": 300, "epochs": 1},
            "evaluate": {"importance_samples": 20, "prior_samples": 100},
            "figures": {"projection_points": 60},
        }
    )
    train(params)
    classifier_stage(params)
    evaluate_stage(params)
    metrics = json.loads(Artifacts.of(params).evaluate_metrics.read_text())
    assert metrics["test_images"] == 60 and metrics["importance_samples"] == 20
    assert metrics["nll"] <= metrics["neg_elbo"] + 0.5
    assert metrics["neg_elbo"] == pytest.approx(metrics["reconstruction"] + metrics["kl"], abs=1e-3)
    assert 0 <= metrics["active_units"] <= metrics["latent_dim"] == 4
    assert 0 <= metrics["latent_accuracy"] <= 1 and metrics["frechet_distance"] >= 0
    figures_stage(params)
    pngs = sorted(Path("results/figures").glob("*.png"))
    assert {p.stem for p in pngs} == {
        "reconstructions",
        "prior_samples",
        "latent_traversals",
        "latent_projection",
        "training_curves",
        "schedules",
        "kl_per_dimension",
        "augmentation_preview",
    }
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)

    run_id = json.loads(Path("results/train/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    logged, tags = run.data.metrics, run.data.tags
    assert logged["test_nll"] == pytest.approx(metrics["nll"])
    assert logged["test_active_units"] == metrics["active_units"]
    assert logged["best_val_neg_elbo"] > 0 and logged["train_seconds"] > 0
    # settings and counts are tags, measurements are metrics, each under one name
    assert tags["test_images"] == "60" and tags["importance_samples"] == "20"
    assert tags["epochs_run"] == "2" and tags["best_epoch"] in ("1", "2")
    doubled = [k for k in logged if k.startswith(("test_test", "best_best", "best_epoch"))]
    assert not doubled and "test_latent_dim" not in logged and "test_seconds" not in logged
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "figures")}
    assert "figures/reconstructions.png" in names and len(names) == 8


def test_the_bounds_graph_does_not_grow_with_k(binary_images):
    """k = 1000 in chunks of 1 is a loop in the graph, not 1000 decoder copies."""
    import tensorflow as tf

    from vaelab.evaluation.likelihood import _batch_estimates

    x, logit, _ = binary_images
    vae = _constant_vae(0.0, 0.0, logit)

    def graph_size(k: int, chunk: int) -> int:
        step = tf.function(lambda xb, eps: _batch_estimates(vae, xb, eps, k, chunk))
        eps = tf.zeros((k, 8, int(vae.encoder.outputs[0].shape[-1])))
        graph = step.get_concrete_function(tf.constant(x[:8]), eps).graph
        return len(graph.as_graph_def().node)

    assert graph_size(1000, 1) == graph_size(10, 1)
    assert graph_size(1000, 3) == graph_size(10, 3)  # one more decoder for the remainder


def _mixture(means, log_vars, logits) -> MixturePrior:
    prior = MixturePrior(len(logits), len(means[0]))
    prior.set_weights([np.float32(means), np.float32(log_vars), np.float32(logits)])
    return prior


def test_mixture_prior_densities_and_samples_match_numpy():
    rng = np.random.default_rng(3)
    means, log_vars = rng.normal(size=(3, DIM)), rng.normal(size=(3, DIM)) * 0.3
    logits = np.array([0.0, 1.0, -0.5])
    prior, weights = _mixture(means, log_vars, logits), np.exp(logits) / np.exp(logits).sum()
    z = rng.normal(size=(5, DIM)).astype(np.float32)
    per_dim = np.exp(-0.5 * (z[:, None] - means) ** 2 / np.exp(log_vars)) / np.sqrt(
        2 * np.pi * np.exp(log_vars)
    )  # [5, K, DIM]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(prior.log_prob(z)),
        np.log((per_dim.prod(-1) * weights).sum(-1)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(prior.marginal_log_probs(z)),
        np.log((per_dim * weights[:, None]).sum(1)),
        rtol=1e-5,
    )
    draws = prior.sample(200_000, seed=0)
    np.testing.assert_allclose(draws.mean(0), weights @ means, atol=0.01)
    second = weights @ (np.exp(log_vars) + means**2)
    np.testing.assert_allclose(draws.var(0), second - (weights @ means) ** 2, atol=0.02)


def test_the_bound_uses_the_models_learned_prior(binary_images):
    """q(z|x) equal to a learned one-component prior N(0.5, 1.5): the bound is exact and the
    KL zero; scored against N(0, I) instead, both would be off."""
    x, logit, true_nll = binary_images
    vae = _constant_vae(0.5, math.log(1.5), logit)
    vae.prior = _mixture([[0.5] * DIM], [[math.log(1.5)] * DIM], [0.0])
    est = estimate(vae, x, 7, chunk=5, progress=False)
    np.testing.assert_allclose(est.nll, true_nll, rtol=1e-4)
    np.testing.assert_allclose(est.kl, 0.0, atol=1e-5)
    np.testing.assert_allclose(est.kl_per_dim, 0.0, atol=1e-5)
    vae.prior = _mixture([[0.0] * DIM], [[0.0] * DIM], [0.0])  # N(0, I) as a mixture
    standard = estimate(_constant_vae(0.5, math.log(1.5), logit), x, 7, chunk=5, progress=False)
    est = estimate(vae, x, 7, chunk=5, progress=False)
    np.testing.assert_allclose(est.nll, standard.nll, rtol=1e-5)
    assert abs(float(est.kl.mean() - standard.kl.mean())) < 0.05  # 7-sample vs closed form
