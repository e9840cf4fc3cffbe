"""Evaluate the trained VAE on the test set: likelihood, ELBO parts (beta = 1), collapse
diagnostics, latent usefulness and sample quality; numbers land in DVC metrics and in the
training run in MLflow."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.atomic import write_json, write_text
from vaelab.latent import ACTIVE_THRESHOLD, activity, latent_classifier_accuracy
from vaelab.likelihood import bits_per_dim, estimate
from vaelab.params import Params
from vaelab.prepare import load_prepared, model_data


def output_paths(params: Params) -> dict[str, Path]:
    results = Path(params.base.paths.results) / "evaluate"
    return {"metrics": results / "metrics.json", "latent_dims": results / "latent_dims.csv"}


def load_vae(params: Params):
    """The trained model from the train stage (safe mode: no arbitrary code on load)."""
    import keras

    import vaelab.model  # noqa: F401 - registers the VAE classes for deserialization

    return keras.saving.load_model(Path(params.base.paths.models) / "model.keras", safe_mode=True)


def encode_means(vae, x: np.ndarray, batch_size: int) -> np.ndarray:
    return vae.encoder.predict(x, batch_size=batch_size, verbose=0)[0]


def sample_prior(vae, n: int, seed: int, batch_size: int) -> np.ndarray:
    """Decoder means E[x|z] for z ~ N(0, I)."""
    from keras import ops

    z = np.random.default_rng(seed).standard_normal((n, vae.encoder.outputs[0].shape[-1]))
    logits = vae.decoder.predict(z.astype(np.float32), batch_size=batch_size, verbose=0)
    return ops.convert_to_numpy(ops.sigmoid(logits))


def sample_quality(
    params: Params, vae, x_gray_test: np.ndarray, x_gray_train: np.ndarray
) -> dict[str, float]:
    """Fréchet distance of prior samples to the test images, and the real-data floor."""
    import keras

    from vaelab.frechet import feature_extractor, frechet_distance

    cfg = params.evaluate
    classifier = keras.saving.load_model(Path(params.base.paths.models) / "classifier.keras")
    features = feature_extractor(classifier)

    def embed(x: np.ndarray) -> np.ndarray:
        return features.predict(x, batch_size=500, verbose=0)

    samples = sample_prior(vae, cfg.prior_samples, params.base.seed, cfg.batch_size)
    test_features = embed(x_gray_test)
    return {
        "frechet_distance": frechet_distance(embed(samples), test_features),
        "frechet_floor": frechet_distance(embed(x_gray_train[: len(x_gray_test)]), test_features),
    }


def evaluate(params: Params) -> dict[str, Any]:
    """Compute and write the test metrics; log them into the training run."""
    from keras import ops

    cfg, prepared = params.evaluate, params.base.paths.prepared
    started = time.perf_counter()
    vae = load_vae(params)
    x_test, y_test = model_data(prepared, "test")
    est = estimate(
        vae, x_test, cfg.importance_samples, cfg.batch_size, cfg.chunk, seed=params.base.seed
    )
    x_train, y_train = model_data(prepared, "train")
    x_gray_test, _ = load_prepared(prepared, "test")
    x_gray_train, _ = load_prepared(prepared, "train")
    recon = ops.convert_to_numpy(vae.predict(x_gray_test, batch_size=cfg.batch_size, verbose=0))
    per_dim_activity = activity(est.z_mean)
    active = per_dim_activity > ACTIVE_THRESHOLD
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
        "classifier_accuracy": _classifier_accuracy(params),
        "importance_samples": cfg.importance_samples,
        "test_images": len(x_test),
    }
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    out = output_paths(params)
    write_json(out["metrics"], metrics)
    write_text(out["latent_dims"], _latent_table(est.kl_per_dim.mean(0), per_dim_activity))
    _log_to_run(params, metrics, out["latent_dims"])
    return metrics


def _classifier_accuracy(params: Params) -> float:
    path = Path(params.base.paths.results) / "classifier" / "metrics.json"
    return json.loads(path.read_text())["test_accuracy"]


def _latent_table(kl: np.ndarray, act: np.ndarray) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dim", "kl", "activity", "active"])
    for dim, (k, a) in enumerate(zip(kl, act, strict=True)):
        writer.writerow([dim, f"{k:.6g}", f"{a:.6g}", int(a > ACTIVE_THRESHOLD)])
    return out.getvalue()


def _log_to_run(params: Params, metrics: dict[str, Any], latent_dims: Path) -> None:
    from vaelab import tracking
    from vaelab.outbox import Delivery, deliver

    run_id = tracking.training_run_id(params)
    if deliver(
        Delivery(
            run_id,
            metrics={f"test_{k}": float(v) for k, v in metrics.items()},
            artifacts=[(str(latent_dims), "evaluate")],
        )
    ):
        print(f"logged to MLflow run {run_id}")
