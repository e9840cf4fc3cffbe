"""The figures stage: render every figure of a trained run into results/figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from keras import ops

from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import model_data, read_meta
from vaelab.evaluation.latent import read_latent_table
from vaelab.model.io import (
    decode_means,
    encode_means,
    latent_dim,
    load_vae,
    prior_name,
    reconstruct,
    sample_prior,
)
from vaelab.report import plots
from vaelab.training.history import read_history
from vaelab.training.pipeline import batch_transform


def _projection(z: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca").fit_transform(z)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(z)


def _prior_centre(vae) -> tuple[np.ndarray, np.ndarray]:
    """A typical point of the prior and its standard deviation per dimension: the origin and 1
    for N(0, I); the mean and deviation of a mixture's heaviest component (a mixture's origin
    can lie between its components, where the decoder has seen no code)."""
    if vae.prior is None:
        return np.zeros(latent_dim(vae)), np.ones(latent_dim(vae))
    heaviest = int(np.argmax(ops.convert_to_numpy(vae.prior.logits)))
    log_var = ops.convert_to_numpy(vae.prior.log_vars)[heaviest]
    return ops.convert_to_numpy(vae.prior.means)[heaviest], np.exp(0.5 * log_var)


def render_all(params: Params) -> dict[str, Path]:
    """Draw the run's figures; return {name: png path}."""
    cfg, seed, paths = params.figures, params.base.seed, Artifacts.of(params)
    vae = load_vae(paths.model)
    dim = latent_dim(vae)
    x_test, y_test = model_data(paths, "test")
    history = read_history(paths.train_history)
    kl, act = read_latent_table(paths.latent_dims)
    drawn = {
        "reconstructions": plots.reconstructions(
            x_test[: cfg.columns], reconstruct(vae, x_test[: cfg.columns])
        ),
        "prior_samples": plots.grid_figure(
            sample_prior(vae, cfg.grid**2, seed),
            cfg.grid,
            f"Samples from the prior: E[x|z], z ~ {prior_name(vae)}, {cfg.grid}x{cfg.grid}",
        ),
        "training_curves": plots.training_curves(history),
        "schedules": plots.schedules(history),
        "kl_per_dimension": plots.kl_per_dimension(kl, act, vae.prior is not None),
    }
    values = np.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.traversal_steps)
    centre, scale = _prior_centre(vae)
    if dim == 2:
        grid = np.array([[a, b] for b in values[::-1] for a in values])
        drawn["latent_traversals"] = plots.manifold(
            decode_means(vae, centre + grid * scale), len(values), cfg.traversal_range
        )
    else:
        dims = [int(d) for d in np.argsort(-kl)[: cfg.traversal_dims]]
        rows = []
        for d in dims:
            z = np.tile(centre, (len(values), 1))
            z[:, d] += values * scale[d]
            rows.append(decode_means(vae, z))
        drawn["latent_traversals"] = plots.traversals(rows, dims, values)
    n = min(cfg.projection_points, len(x_test))
    z_test = encode_means(vae, x_test[:n], 500)
    points = z_test if dim == 2 else _projection(z_test, cfg.projection, seed)
    drawn["latent_projection"] = plots.latent_projection(
        points, y_test[:n], "latent" if dim == 2 else cfg.projection
    )
    originals = model_data(paths, "train", fixed_draw=False)[0][: cfg.columns]
    augment = batch_transform(params.prepare.augment, seed, read_meta(paths)["binarize"])
    seen = [vae.training_inputs(augment(originals) if augment else originals) for _ in range(3)]
    draws = [ops.convert_to_numpy(x) for x in seen]  # as the train step sees them
    drawn["augmentation_preview"] = plots.augmentation_preview(originals, draws)
    return {
        name: plots.save_figure(fig, paths.figures / f"{name}.png") for name, fig in drawn.items()
    }
