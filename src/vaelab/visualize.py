"""Render every figure of a trained run into results/figures and attach them to its MLflow run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vaelab import figures
from vaelab.callbacks import read_history
from vaelab.params import Params
from vaelab.prepare import model_data, read_meta


def figure_dir(params: Params) -> Path:
    return Path(params.base.paths.results) / "figures"


def _decode(vae, z: np.ndarray) -> np.ndarray:
    from keras import ops

    return ops.convert_to_numpy(ops.sigmoid(vae.decoder.predict(z.astype(np.float32), verbose=0)))


def _latent_dims(params: Params) -> tuple[np.ndarray, np.ndarray]:
    path = Path(params.base.paths.results) / "evaluate" / "latent_dims.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return (
        np.array([float(r["kl"]) for r in rows]),
        np.array([float(r["activity"]) for r in rows]),
    )


def _projection(z: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca").fit_transform(z)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(z)


def render_all(params: Params) -> dict[str, Path]:
    """Draw the run's figures; return {name: png path}."""
    from vaelab.evaluate import encode_means, load_vae, sample_prior
    from vaelab.input_pipeline import batch_transform

    cfg, seed, out = params.figures, params.base.seed, figure_dir(params)
    vae = load_vae(params)
    latent_dim = vae.encoder.outputs[0].shape[-1]
    x_test, y_test = model_data(params.base.paths.prepared, "test")
    history = read_history(Path(params.base.paths.results) / "train" / "history.csv")
    kl, act = _latent_dims(params)
    drawn = {
        "reconstructions": figures.reconstructions(
            x_test[: cfg.columns], vae.predict(x_test[: cfg.columns], verbose=0)
        ),
        "prior_samples": figures.grid_figure(
            sample_prior(vae, cfg.grid**2, seed, 500),
            cfg.grid,
            f"Samples from the prior: E[x|z], z ~ N(0, I), {cfg.grid}x{cfg.grid}",
        ),
        "training_curves": figures.training_curves(history),
        "schedules": figures.schedules(history),
        "kl_per_dimension": figures.kl_per_dimension(kl, act),
    }
    values = np.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.traversal_steps)
    if latent_dim == 2:
        grid = np.array([[a, b] for b in values[::-1] for a in values])
        drawn["latent_traversals"] = figures.manifold(
            _decode(vae, grid), len(values), cfg.traversal_range
        )
    else:
        dims = [int(d) for d in np.argsort(-kl)[: cfg.traversal_dims]]
        rows = []
        for dim in dims:
            z = np.zeros((len(values), latent_dim))
            z[:, dim] = values
            rows.append(_decode(vae, z))
        drawn["latent_traversals"] = figures.traversals(rows, dims, values)
    n = min(cfg.projection_points, len(x_test))
    z_test = encode_means(vae, x_test[:n], 500)
    points = z_test if latent_dim == 2 else _projection(z_test, cfg.projection, seed)
    drawn["latent_projection"] = figures.latent_projection(
        points, y_test[:n], "latent" if latent_dim == 2 else cfg.projection
    )
    originals = model_data(params.base.paths.prepared, "train", fixed_draw=False)[0][: cfg.columns]
    transform = batch_transform(
        params.prepare.augment, seed, read_meta(params.base.paths.prepared)["binarize"]
    )
    draws = [np.asarray(transform(originals)) if transform else originals for _ in range(3)]
    drawn["augmentation_preview"] = figures.augmentation_preview(originals, draws)
    return {name: figures.save_figure(fig, out / f"{name}.png") for name, fig in drawn.items()}
