"""Plot helpers: the figures people want from a VAE run, each a PNG readable at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from vaelab.core.atomic import atomic_write
from vaelab.core.mnist import HEIGHT, WIDTH
from vaelab.evaluation.latent import ACTIVE_THRESHOLD, is_active


def image_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tile [rows*cols, H, W, 1] images into one [rows*H, cols*W] array."""
    tiles = images[: rows * cols, ..., 0].reshape(rows, cols, HEIGHT, WIDTH)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * HEIGHT, cols * WIDTH)


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def reconstructions(originals: np.ndarray, recon: np.ndarray) -> plt.Figure:
    """The classic figure: originals (top row) over their reconstructions (bottom row)."""
    cols = len(originals)
    fig, axes = plt.subplots(2, cols, figsize=(1.2 * cols, 3), squeeze=False)
    for col in range(cols):
        _show(axes[0, col], originals[col, ..., 0])
        _show(axes[1, col], recon[col, ..., 0])
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("reconstruction")
    fig.suptitle("Test images (top) and their reconstructions E[x|z=mean] (bottom)")
    return fig


def grid_figure(images: np.ndarray, side: int, title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(0.6 * side + 1, 0.6 * side + 1))
    _show(ax, image_grid(images, side, side))
    fig.suptitle(title)
    return fig


def traversals(rows: list[np.ndarray], dims: list[int], values: np.ndarray) -> plt.Figure:
    """One row per latent dimension: decoded means as that dimension sweeps ``values``."""
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(0.6 * len(values) + 1.5, 0.7 * len(rows) + 1), squeeze=False
    )
    for ax, row, dim in zip(axes[:, 0], rows, dims, strict=True):
        _show(ax, image_grid(row, 1, len(values)))
        ax.set_ylabel(f"z{dim}", rotation=0, labelpad=15)
    axes[-1, 0].set_xticks(
        np.arange(len(values)) * WIDTH + WIDTH // 2, [f"{v:+.1f}" for v in values]
    )
    axes[-1, 0].set_xlabel(
        "offset of the traversed dimension from the prior's centre, in its standard deviations"
    )
    fig.suptitle("Latent traversals of the most informative dimensions (by KL)")
    return fig


def manifold(images: np.ndarray, side: int, span: float) -> plt.Figure:
    """For a 2-D latent space: decoded means over a grid of the prior's quantiles."""
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(
        image_grid(images, side, side),
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(-span, span, -span, span),
    )
    ax.set_xlabel("z0")
    ax.set_ylabel("z1")
    ax.set_title("2-D latent manifold (decoded means)")
    return fig


def latent_projection(points: np.ndarray, labels: np.ndarray, method: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 6))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
    fig.colorbar(scatter, ax=ax, ticks=range(10), label="digit")
    ax.set_title(f"Test-set latent means, {method.upper()} to 2-D")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    return fig


def training_curves(history: list[dict[str, Any]]) -> plt.Figure:
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(
        axes,
        [
            ("neg_elbo", "-ELBO (beta = 1)"),
            ("reconstruction", "Reconstruction -log p(x|z)"),
            ("kl", "KL(q(z|x) || p(z))"),
        ],
        strict=True,
    ):
        ax.plot(epochs, [row[key] for row in history], label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.legend()
    fig.suptitle("Training curves")
    fig.tight_layout()
    return fig


def schedules(history: list[dict[str, Any]]) -> plt.Figure:
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [row["learning_rate"] for row in history], marker=".")
    left.set_title("Learning rate (at the end of each epoch)")
    right.plot(epochs, [row["beta"] for row in history], marker=".", color="tab:red")
    right.set_title("KL weight beta (at the end of each epoch)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def kl_per_dimension(kl: np.ndarray, act: np.ndarray, learned_prior: bool = False) -> plt.Figure:
    """KL and activity per latent dimension; under a learned prior each dimension's KL is
    against the prior's marginal in that dimension."""
    dims = np.arange(len(kl))
    active = is_active(act)
    colors = np.where(active, "tab:blue", "tab:gray")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.25 * len(kl) + 2), 7), sharex=True)
    top.bar(dims, kl, color=colors)
    top.set_ylabel("KL against the prior's marginal (nats)" if learned_prior else "KL (nats)")
    top.set_title(f"KL per latent dimension: {active.sum()} of {len(kl)} active (grey: inactive)")
    bottom.bar(dims, act, color=colors)
    bottom.axhline(
        ACTIVE_THRESHOLD,
        color="tab:red",
        linestyle="--",
        label=f"active-unit threshold {ACTIVE_THRESHOLD}",
    )
    bottom.set_yscale("log")
    bottom.set_ylabel("Cov_x E_q[z_u|x]")
    bottom.set_xlabel("latent dimension")
    bottom.legend()
    fig.tight_layout()
    return fig


def augmentation_preview(originals: np.ndarray, augmented: list[np.ndarray]) -> plt.Figure:
    rows = [originals, *augmented]
    cols = len(originals)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, 1.3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            _show(axes[r, c], row[c, ..., 0])
        axes[r, 0].set_ylabel("original" if r == 0 else f"draw {r}")
    fig.suptitle("Training inputs: originals and augmented draws as the model sees them")
    return fig


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write a PNG atomically and close the figure."""
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
