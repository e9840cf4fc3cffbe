"""Figures that compare runs: the rate-distortion plane and learning curves with their spread
over seeds."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from adjustText import adjust_text
from matplotlib.ticker import MaxNLocator

History = list[dict[str, float]]  # one run's rows, one per epoch


@dataclass(frozen=True)
class RatePoint:
    """One run (or the mean of a variant's seeds) on the rate-distortion plane."""

    label: str
    rate: float
    distortion: float
    rate_sd: float = 0.0
    distortion_sd: float = 0.0
    colour: str = "tab:blue"
    star: bool = False  # the baseline


def rate_distortion(points: list[RatePoint], title: str, of: str = "test set") -> plt.Figure:
    """Rate against distortion (± sd), lines of equal -ELBO, every point labelled where
    adjustText finds room."""
    fig, ax = plt.subplots(figsize=(12, 9) if len(points) > 12 else (9, 6.5))
    for p in points:
        ax.errorbar(p.rate, p.distortion, p.distortion_sd, p.rate_sd, fmt="*" if p.star else "o",
                    markersize=12 if p.star else 5, elinewidth=0.8, color=p.colour)  # fmt: skip
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.set_autoscale_on(False)
    for total in MaxNLocator(6).tick_values(x0 + y0, x1 + y1)[1:-1]:
        ax.plot([x0, x1], [total - x0, total - x1], color="lightgray", linewidth=1, zorder=0)
        x = min(x1, total - y0)
        if x > x0 + 0.15 * (x1 - x0):  # room for the label inside the axes
            style = {"fontsize": 7, "color": "gray", "ha": "right", "va": "bottom"}
            ax.annotate(f"-ELBO {total:g}", (x, total - x), **style)
    texts = [ax.text(p.rate, p.distortion, p.label, fontsize=7) for p in points]
    if texts:
        xs, ys = [p.rate for p in points], [p.distortion for p in points]
        line = {"arrowstyle": "-", "color": "gray", "linewidth": 0.5}
        adjust_text(
            texts, xs, ys, ax=ax, expand=(1.1, 1.8), force_explode=(0.2, 1), arrowprops=line
        )
    ax.set_xlabel(f"rate: KL(q(z|x) || p(z)), nats ({of})")
    ax.set_ylabel("distortion: -log p(x|z), nats")
    ax.set_title(f"{title}; grey lines: equal -ELBO")
    ax.grid(alpha=0.2)
    return fig


@dataclass(frozen=True)
class Panel:
    """One variant's validation -ELBO curves over its baseline's, and the level counted as
    converged (``within`` nats above the baseline's final value)."""

    title: str
    label: str
    runs: list[History]
    baseline: str
    baseline_runs: list[History]
    converged: float


def learning_curves(panels: list[Panel], within: float) -> plt.Figure:
    """Validation -ELBO per epoch, mean and min-max band over seeds: each variant (red) over
    its baseline (black), one panel each, the converged level dashed."""
    cols = 4
    rows_n = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel.baseline_runs:
            _band(ax, panel.baseline_runs, "black", panel.baseline)
        _band(ax, panel.runs, "tab:red", panel.label)
        ax.axhline(panel.converged, color="gray", linewidth=0.8, linestyle="--")
        ax.set_title(textwrap.fill(panel.title, 60), fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.2)
        ends = [h[-1]["val_neg_elbo"] for h in panel.runs]
        if math.isfinite(panel.converged):  # from both final values to 12 nats above them
            ends.append(panel.converged - within)
        ax.set_ylim(min(ends) - 1.5, max(ends) + 12)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation -ELBO, nats")
    fig.suptitle(f"Validation -ELBO per epoch: each variant (red) over its baseline (black), "
                 f"mean and min-max band over seeds; dashed: within {within:g} nat of the "
                 "baseline's final value")  # fmt: skip
    fig.tight_layout()
    return fig


def _band(ax, histories: list[History], colour: str, name: str) -> None:
    length = max(len(h) for h in histories)
    values = np.full((len(histories), length), np.nan)
    for i, h in enumerate(histories):
        values[i, : len(h)] = [e["val_neg_elbo"] for e in h]
    epochs = np.arange(1, length + 1)
    ax.plot(epochs, np.nanmean(values, axis=0), color=colour, linewidth=1, label=name)
    ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=colour,
                    alpha=0.2, linewidth=0)  # fmt: skip
