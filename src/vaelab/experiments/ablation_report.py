"""The ablation's report: summary.csv, ablation.md (the verdicts in plain words, the table,
the learning-rate tuning) and two figures, the forest plot of the effects and the
rate-distortion plane with iso-ELBO lines."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from vaelab.core.atomic import write_text
from vaelab.experiments.compare import markdown
from vaelab.experiments.effects import LEVEL, Summary
from vaelab.report.plots import save_figure

VERDICT_COLOURS = {"helps": "tab:green", "hurts": "tab:red"}
METRIC_NAMES = {"test_nll": "test NLL", "recon_mse_grayscale": "reconstruction MSE"}
FOREST = "forest.png"
RATE_DISTORTION = "rate_distortion.png"
LINEAR_NATS = 1.0  # the forest plot turns logarithmic beyond this effect when some are large
ZOOM_NATS = 8.0  # the zoomed panel: variants this close to the baseline in rate and distortion


def _pm(summary: Summary, column: str, digits: int = 2) -> str:
    if column not in summary.means:
        return "missing"
    mean, sd = summary.means[column], summary.sds[column]
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def _effect(summary: Summary) -> str:
    if summary.interval is None:
        return ""
    i, digits = summary.interval, 2 if summary.metric == "test_nll" else 5
    name = "" if summary.metric == "test_nll" else f" ({METRIC_NAMES[summary.metric]})"
    return f"{i.difference:+.{digits}f} [{i.low:+.{digits}f}, {i.high:+.{digits}f}]{name}"


def in_words(summaries: list[Summary]) -> list[str]:
    """One sentence per verdict: which tricks help, hurt, or make no measurable difference."""
    lines = []
    for verdict in ("helps", "hurts", "no measurable difference", "fails to train"):
        chosen = [f"{s.group}: {s.label}" for s in summaries if s.verdict == verdict]
        if chosen:
            lines.append(f"- **{verdict}**: " + "; ".join(chosen) + ".")
    idle = [f"{s.group}: {s.label} = {s.same_as}" for s in summaries if s.same_as]
    if idle:
        lines.append(
            "- **never acted** at this profile (every seed's numbers equal another variant's, "
            "so the switch changed nothing): " + "; ".join(idle) + "."
        )
    waiting = [f"{s.group}: {s.label}" for s in summaries if s.verdict == "too few seeds yet"]
    if waiting:
        lines.append("- **not judged yet** (fewer than 2 seeds): " + "; ".join(waiting) + ".")
    return lines or ["No variant has finished yet: only the baseline's seeds are in."]


def table(summaries: list[Summary]) -> str:
    headers = [
        "trick",
        "variant",
        "seeds",
        "test NLL (mean ± sd)",
        f"Δ vs baseline [{LEVEL:.0%} CI]",
        "verdict",
        "-ELBO",
        "rate (KL)",
        "distortion",
        "active units",
        "recon. MSE",
        "train s",
    ]
    rows = [
        [
            s.group,
            s.label,
            f"{s.n} (+{s.failed} failed)" if s.failed else s.n,
            _pm(s, "test_nll"),
            _effect(s),
            f"{s.verdict} (same runs as {s.same_as})" if s.same_as else s.verdict,
            _pm(s, "test_neg_elbo"),
            _pm(s, "rate"),
            _pm(s, "distortion"),
            _pm(s, "active_units", 1),
            _pm(s, "recon_mse_grayscale", 4),
            _pm(s, "train_seconds", 0),
        ]
        for s in summaries
    ]
    return markdown(headers, rows)


def summary_csv(summaries: list[Summary]) -> str:
    columns = sorted({c for s in summaries for c in s.means})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["variant", "group", "label", "seeds", "failed", "metric"]
        + ["difference", "low", "high", "verdict", "same_as"]
        + [f"{c}_{stat}" for c in columns for stat in ("mean", "sd")]
    )
    for s in summaries:
        i = s.interval
        writer.writerow(
            [s.name, s.group, s.label, s.n, s.failed, s.metric]
            + ([f"{i.difference:.6g}", f"{i.low:.6g}", f"{i.high:.6g}"] if i else ["", "", ""])
            + [s.verdict, s.same_as]
            + [
                f"{getattr(s, stat)[c]:.6g}" if c in s.means else ""
                for c in columns
                for stat in ("means", "sds")
            ]
        )
    return out.getvalue()


def forest(summaries: list[Summary]) -> plt.Figure:
    """Effect on test NLL ± its interval per variant, sorted, zero marked."""
    judged = sorted(
        (s for s in summaries if s.interval and s.metric == "test_nll"),
        key=lambda s: s.interval.difference,
    )
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.34 * max(len(judged), 1)))
    for y, s in enumerate(judged):
        i, colour = s.interval, VERDICT_COLOURS.get(s.interval.verdict, "tab:gray")
        ax.errorbar(
            i.difference,
            y,
            xerr=[[i.difference - i.low], [i.high - i.difference]],
            fmt="o",
            color=colour,
            capsize=3,
        )
    ax.axvline(0.0, color="black", linewidth=1)
    labels = [f"{s.group}: {s.label} (n={s.n})" for s in judged]
    ax.set_yticks(range(len(judged)), labels, fontsize=8)
    scale = ""
    if any(max(-s.interval.low, s.interval.high) > 4 * LINEAR_NATS for s in judged):
        low, high = (limit * 1.15 for limit in ax.get_xlim())
        ax.set_xscale("symlog", linthresh=LINEAR_NATS, linscale=1)  # small effects stay legible
        ax.set_xlim(low, high)
        ticks = [t * sign for t in (0.5, 1, 2, 5, 10, 20, 50, 100) for sign in (-1, 1)]
        ax.set_xticks(sorted(t for t in [0, *ticks] if low <= t <= high))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        scale = f"\nlinear within ±{LINEAR_NATS:g} nat, logarithmic beyond"
    ax.set_xlabel(
        f"test NLL minus the baseline's, nats ({LEVEL:.0%} Welch interval); < 0 helps{scale}"
    )
    ax.set_title("Effect of each trick against the baseline (green helps, red hurts)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def label_spots(
    xs: list[float], ys: list[float], labels: list[str], per_point: tuple[float, float]
) -> list[tuple[float, float]]:
    """Where each point's label goes (data units): just above-right of its point, moved up
    past the labels already placed and the other points' markers that it would cover (7-pt
    text, lowest points first)."""
    px, py = per_point
    height = 9 * py
    markers = [(x - 6 * px, y - 4 * py, 12 * px) for x, y in zip(xs, ys, strict=True)]
    placed: list[tuple[float, float, float]] = []  # x, y, width
    spots = [(0.0, 0.0)] * len(xs)
    for i in sorted(range(len(xs)), key=ys.__getitem__):
        x, y, width = xs[i] + 4 * px, ys[i] + 3 * py, (3.8 * len(labels[i]) + 4) * px
        others = placed + markers[:i] + markers[i + 1 :]
        while any(abs(y - b) < height and x < a + w and a < x + width for a, b, w in others):
            y += height
        placed.append((x, y, width))
        spots[i] = (x, y)
    return spots


def near_baseline(rates: np.ndarray, distortions: np.ndarray, baseline: int) -> np.ndarray:
    """The points within ZOOM_NATS of the baseline in both rate and distortion."""
    return (np.abs(rates - rates[baseline]) <= ZOOM_NATS) & (
        np.abs(distortions - distortions[baseline]) <= ZOOM_NATS
    )


def iso_elbo(ax: plt.Axes) -> None:
    """Grey lines of equal rate + distortion across ``ax`` as its limits stand, each named
    where it leaves the plot at the lower right."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.set_autoscale_on(False)
    for total in MaxNLocator(6).tick_values(x0 + y0, x1 + y1)[1:-1]:
        ax.plot([x0, x1], [total - x0, total - x1], color="lightgray", linewidth=1, zorder=0)
        x = min(x1, total - y0)
        ax.annotate(
            f"-ELBO {total:g}", (x, total - x), fontsize=7, color="gray", ha="right", va="bottom"
        )


def _plane(
    ax: plt.Axes, points: list[Summary], rates: np.ndarray, distortions: np.ndarray, shown: list
) -> None:
    """Each variant's mean (± sd) on ``ax``, lines of equal -ELBO, and labels on ``shown``."""
    for s, x, y in zip(points, rates, distortions, strict=True):
        baseline = s.name == "baseline"
        colour = "black" if baseline else VERDICT_COLOURS.get(s.verdict, "tab:blue")
        ax.errorbar(
            x,
            y,
            xerr=np.nan_to_num(s.sds["rate"]),
            yerr=np.nan_to_num(s.sds["distortion"]),
            fmt="*" if baseline else "o",
            markersize=12 if baseline else 5,
            color=colour,
            elinewidth=0.8,
            alpha=0.8,
        )
    iso_elbo(ax)
    fig = ax.figure
    per_point = (  # data units per typographic point, along x and y
        np.ptp(ax.get_xlim()) / (ax.bbox.width * 72 / fig.dpi),
        np.ptp(ax.get_ylim()) / (ax.bbox.height * 72 / fig.dpi),
    )
    labels = [points[i].label for i in shown]
    xs, ys = list(rates[shown]), list(distortions[shown])
    spots = label_spots(xs, ys, labels, per_point)
    leader = {"arrowstyle": "-", "color": "gray", "linewidth": 0.5}  # shows once a label moved
    for label, x, y, spot in zip(labels, xs, ys, spots, strict=True):
        ax.annotate(label, (x, y), xytext=spot, fontsize=7, arrowprops=leader)
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats (test set, mean over seeds)")
    ax.set_ylabel("distortion: -log p(x|z), nats")
    ax.grid(alpha=0.2)


def rate_distortion(summaries: list[Summary]) -> plt.Figure:
    """Mean rate and distortion per variant (± sd), with lines of equal -ELBO: the whole plane
    (labels on the variants far from the baseline) and, beside it, the crowd within
    ZOOM_NATS of the baseline, every one labelled."""
    points = [
        s for s in summaries if s.metric == "test_nll" and {"rate", "distortion"} <= set(s.means)
    ]
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(15, 7.5))
    fig.suptitle("Rate-distortion of every variant; grey lines: equal -ELBO (rate + distortion)")
    rates = np.array([s.means["rate"] for s in points])
    distortions = np.array([s.means["distortion"] for s in points])
    names = [s.name for s in points]
    if "baseline" not in names:
        zoom.set_axis_off()
        if points:
            _plane(whole, points, rates, distortions, list(range(len(points))))
        return fig
    near = near_baseline(rates, distortions, names.index("baseline"))
    _plane(whole, points, rates, distortions, list(np.flatnonzero(~near)))
    x0, x1 = rates[near].min() - 1, rates[near].max() + 1
    y0, y1 = distortions[near].min() - 1, distortions[near].max() + 1
    x1, y1 = x1 + 0.6 * (x1 - x0), y1 + 0.4 * (y1 - y0)  # room for the labels, right and above
    zoom.set_xlim(x0, x1)
    zoom.set_ylim(y0, y1)
    inside = (rates >= x0) & (rates <= x1) & (distortions >= y0) & (distortions <= y1)
    _plane(zoom, points, rates, distortions, list(np.flatnonzero(inside)))  # labels all it shows
    whole.add_patch(
        plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linestyle="--", color="gray")
    )
    whole.set_title("all variants (dashed: the zoom on the right)", fontsize=10)
    zoom.set_title(f"within {ZOOM_NATS:g} nats of the baseline (star)", fontsize=10)
    return fig


def render(
    out: Path,
    summaries: list[Summary],
    header: list[str],
    tuning: list[list[object]],
) -> list[Path]:
    """Write summary.csv, ablation.md and both figures into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.csv", summary_csv(summaries))
    save_figure(forest(summaries), out / FOREST)
    save_figure(rate_distortion(summaries), out / RATE_DISTORTION)
    text = "\n".join(
        [
            "# The trick ablation",
            "",
            "Generated by `python -m vaelab.experiments.ablation` from [runs.csv](runs.csv) "
            "(one row per finished run); do not edit by hand.",
            "",
            *header,
            "",
            "## In plain words",
            "",
            *in_words(summaries),
            "",
            "## Every variant",
            "",
            table(summaries),
            f"![forest plot]({FOREST})",
            "",
            f"![rate-distortion plane]({RATE_DISTORTION})",
            "",
            "## Learning rates of the optimizers (tuning at seed 1, validation -ELBO)",
            "",
            markdown(["optimizer", "learning rate", "validation -ELBO", "chosen"], tuning),
        ]
    )
    write_text(out / "ablation.md", text)
    return [out / name for name in ("summary.csv", "ablation.md", FOREST, RATE_DISTORTION)]
