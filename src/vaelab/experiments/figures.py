"""The figures that compare runs: effects with their intervals (a forest plot), the
rate-distortion plane, and learning curves with their spread over seeds."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
from adjustText import adjust_text
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from vaelab.experiments.measures import DIVERGED, LEVEL, metric

if TYPE_CHECKING:
    from vaelab.experiments.report import Comparison, Summary

History = list[dict[str, float]]  # one run's rows, one per epoch
COLOURS = {"helps": "tab:green", "hurts": "tab:red"}
LINEAR = 4.0  # a forest panel turns logarithmic beyond this many of its units' effects ...
LINEAR_WITHIN = 1.0  # ... linear within this


def forest(found: list[Comparison]) -> plt.Figure | None:
    """One panel per measure: each arm's mean paired difference and its interval, sorted,
    coloured by its adjusted verdict, zero marked; None before any interval exists."""
    shown = [c for c in found if c.measure != DIVERGED and not math.isnan(c.effect.low)]
    if not shown:
        return None
    rows = {m: sorted((c for c in shown if c.measure == m), key=lambda c: c.effect.difference)
            for m in dict.fromkeys(c.measure for c in shown)}  # fmt: skip
    heights = [0.8 + 0.32 * len(r) for r in rows.values()]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 0.6 + sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, (measure, judged) in zip(axes[:, 0], rows.items(), strict=True):
        for y, c in enumerate(judged):
            e = c.effect
            ax.errorbar(e.difference, y, xerr=[[e.difference - e.low], [e.high - e.difference]],
                        fmt="o", color=COLOURS.get(c.verdict, "gray"), capsize=3)  # fmt: skip
        ax.axvline(0.0, color="black", linewidth=1)
        ax.set_yticks(range(len(judged)), [f"{c.arm.group}: {c.arm.label} (n={c.effect.n})"
                                           for c in judged], fontsize=8)  # fmt: skip
        spread = max(max(-c.effect.low, c.effect.high) for c in judged)
        scale = ""
        if spread > LINEAR * LINEAR_WITHIN:
            low, high = (limit * 1.15 for limit in ax.get_xlim())
            ax.set_xscale("symlog", linthresh=LINEAR_WITHIN)  # small effects stay legible
            ax.set_xlim(low, high)
            ticks = [t * s for t in (0.5, 1, 2, 5, 10, 20, 50, 100) for s in (-1, 1)]
            ax.set_xticks(sorted(t for t in [0, *ticks] if low <= t <= high))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            scale = f"; linear within ±{LINEAR_WITHIN:g}, logarithmic beyond"
        m = metric(measure)
        unit = f", {m.unit}" if m.unit else ""
        ax.set_xlabel(f"{m.label}{unit}: arm minus its reference, mean of seed pairs "
                      f"({LEVEL:.0%} paired-t interval){scale}", fontsize=9)  # fmt: skip
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_title("Effect of each arm on its reference (< 0 is better; green helps, red "
                         "hurts after the correction, grey: no verdict)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class RatePoint:
    """One run (or the mean of an arm's seeds) on the rate-distortion plane."""

    label: str
    rate: float
    distortion: float
    rate_sd: float = 0.0
    distortion_sd: float = 0.0
    colour: str = "tab:blue"
    star: bool = False  # a reference


def rate_points(found: list[Summary]) -> list[RatePoint]:
    """Each arm with both means, coloured by nothing but whether it is a reference."""
    referenced = {s.arm.against for s in found}
    points = []
    for s in found:
        if {"kl", "reconstruction"} <= s.means.keys():
            star = s.arm.name in referenced
            rate, distortion = (s.means[m] for m in ("kl", "reconstruction"))
            sds = (s.sds.get(m, 0.0) for m in ("kl", "reconstruction"))
            points.append(RatePoint(s.arm.label, rate, distortion, *sds,
                                    colour="black" if star else "tab:blue", star=star))  # fmt: skip
    return points


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
    """One arm's validation -ELBO curves over its reference's, and the plan's thresholds."""

    title: str
    label: str
    runs: list[History]
    reference: str
    reference_runs: list[History]
    thresholds: list[float]


def learning_curves(panels: list[Panel]) -> plt.Figure:
    """Validation -ELBO per epoch, mean and min-max band over seeds: each arm (red) over its
    reference (black), one panel each, the thresholds of `epochs_to_*` dashed."""
    cols = 4
    rows_n = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel.reference_runs:
            _band(ax, panel.reference_runs, "black", panel.reference)
        _band(ax, panel.runs, "tab:red", panel.label)
        for threshold in panel.thresholds:
            ax.axhline(threshold, color="gray", linewidth=0.8, linestyle="--")
        ax.set_title(textwrap.fill(panel.title, 60), fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.2)
        ends = [h[-1]["val_neg_elbo"] for h in panel.runs + panel.reference_runs]
        ax.set_ylim(min([*ends, *panel.thresholds]) - 1.5, max([*ends, *panel.thresholds]) + 12)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation -ELBO, nats")
    fig.suptitle("Validation -ELBO per epoch: each arm (red) over its reference (black), mean "
                 "and min-max band over seeds; dashed: the plan's thresholds")  # fmt: skip
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


def overlaid_curves(curves: list[tuple[str, list[tuple[int, float]]]]) -> plt.Figure:
    """Validation -ELBO per epoch of each labelled run, overlaid."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, curve in curves:
        ax.plot(*zip(*curve, strict=True), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation -ELBO (beta = 1), nats")
    ax.set_title("Validation curves of all runs")
    if curves:
        ax.legend(fontsize=8)
    return fig


def side_by_side(runs: list[tuple[str, dict[str, Path | None]]], title: str) -> plt.Figure:
    """One row per labelled run: its reconstructions figure and its prior samples figure."""
    kinds = ("reconstructions", "prior_samples")
    fig, axes = plt.subplots(len(runs), 2, figsize=(14, 3.2 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})  # fmt: skip
    for ax_row, (label, images) in zip(axes, runs, strict=True):
        for ax, kind in zip(ax_row, kinds, strict=True):
            if (path := images.get(kind)) is not None:
                ax.imshow(mpimg.imread(path))
            else:
                ax.text(0.5, 0.5, f"{kind}: missing", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(label, fontsize=11)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
