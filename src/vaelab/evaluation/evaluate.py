"""The evaluate stage: test-set likelihood, ELBO parts (beta = 1), collapse diagnostics, latent
usefulness and sample quality, written as DVC metrics (the stage logs them into MLflow)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from vaelab.classifier.network import embed, feature_extractor
from vaelab.core.atomic import write_json, write_text
from vaelab.core.backend import use_backend
from vaelab.core.errors import DataFileError
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import load_prepared, model_data
from vaelab.evaluation.frechet import frechet_distance
from vaelab.evaluation.latent import activity, is_active, latent_classifier_accuracy, latent_table
from vaelab.evaluation.likelihood import bits_per_dim, estimate
from vaelab.model.io import encode_means, load_keras, load_vae, reconstruct, sample_prior

_RECLASSIFY = "Restore it with `dvc checkout` or re-run `dvc repro classifier`"


def sample_quality(
    params: Params, vae, x_gray_test: np.ndarray, x_gray_train: np.ndarray
) -> dict[str, float]:
    """Fréchet distance of prior samples to the test images, and the real-data floor."""
    cfg, paths = params.evaluate, Artifacts.of(params)
    features = feature_extractor(load_keras(paths.classifier_model, _RECLASSIFY))
    samples = sample_prior(vae, cfg.prior_samples, params.base.seed, cfg.batch_size)
    test_features = embed(features, x_gray_test)
    return {
        "frechet_distance": frechet_distance(embed(features, samples), test_features),
        "frechet_floor": frechet_distance(
            embed(features, x_gray_train[: len(x_gray_test)]), test_features
        ),
    }


def classifier_accuracy(paths: Artifacts) -> float:
    """The classifier stage's test accuracy, from its metrics file."""
    path = paths.classifier_metrics
    try:
        accuracy = json.loads(path.read_text(encoding="utf-8"))["test_accuracy"]
        if not isinstance(accuracy, int | float) or not 0 <= accuracy <= 1:
            raise ValueError(f"test_accuracy {accuracy!r} is not a fraction")
    except FileNotFoundError:
        raise DataFileError(path, "missing", _RECLASSIFY) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFileError(path, f"unreadable ({exc})", _RECLASSIFY) from None
    return float(accuracy)


def evaluate(params: Params) -> dict[str, Any]:
    """Compute and write the test metrics; return them."""
    use_backend(params.evaluate.backend)
    cfg, paths = params.evaluate, Artifacts.of(params)
    started = time.perf_counter()
    accuracy = classifier_accuracy(paths)
    vae = load_vae(paths.model)
    x_test, y_test = model_data(paths, "test", binary=vae.likelihood == "bernoulli")
    est = estimate(
        vae, x_test, cfg.importance_samples, cfg.batch_size, cfg.chunk, seed=params.base.seed
    )
    x_train, y_train = model_data(paths, "train")
    x_gray_test, _ = load_prepared(paths, "test")
    x_gray_train, _ = load_prepared(paths, "train")
    recon = reconstruct(vae, x_gray_test, cfg.batch_size)
    per_dim_activity = activity(est.z_mean)
    active = is_active(per_dim_activity)
    metrics: dict[str, Any] = {
        "nll": float(est.nll.mean()),
        "bits_per_dim": bits_per_dim(float(est.nll.mean())),
        "neg_elbo": float((est.reconstruction + est.kl).mean()),
        "reconstruction": float(est.reconstruction.mean()),
        "kl": float(est.kl.mean()),
        "active_units": int(active.sum()),
        "latent_dim": int(active.size),
        "latent_accuracy": latent_classifier_accuracy(
            encode_means(vae, x_train, cfg.batch_size),
            y_train,
            est.z_mean,
            y_test,
            params.base.seed,
        ),
        "recon_mse_grayscale": float(np.mean((recon - x_gray_test) ** 2)),
        **sample_quality(params, vae, x_gray_test, x_gray_train),
        "classifier_accuracy": accuracy,
        "importance_samples": cfg.importance_samples,
        "test_images": len(x_test),
    }
    metrics["evaluate_seconds"] = round(time.perf_counter() - started, 1)
    write_json(paths.evaluate_metrics, metrics)
    write_text(paths.latent_dims, latent_table(est.kl_per_dim.mean(0), per_dim_activity))
    return metrics
