"""The ablation's report, rendered from its plan and runs.csv: summary.csv; from it the
tricks table (trick, effect with its interval, verdict, why), which the README embeds; the
generated part of ablation.md; the forest plot of the effects and the rate-distortion plane."""

from __future__ import annotations

import csv
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from adjustText import adjust_text
from matplotlib.ticker import FormatStrFormatter, MaxNLocator
from tabulate import tabulate

from vaelab.experiments.effects import LEVEL, Summary, same_runs, summarize
from vaelab.experiments.plan import Plan
from vaelab.experiments.results import METRICS, OK, answer

Rows = list[dict[str, str]]
TUNING = "tuning"  # the group of the learning-rate tuning runs: a table of its own
FINGERPRINT = tuple(m for m, _, _ in METRICS if not m.endswith("_seconds"))
COLUMNS = (*(m for m, stage, _ in METRICS if stage == "evaluate"), "train_seconds", "best_epoch")
COLOURS = {"helps": "tab:green", "hurts": "tab:red", "baseline": "black"}
LINEAR_NATS = 1.0  # the forest plot turns logarithmic beyond this once some effect is large
START, END = "<!-- {} generated: start -->", "<!-- {} generated: end -->"


def summaries(plan: Plan, rows: Rows) -> list[Summary]:
    """Each variant with a finished or failed seed, and the earlier variant whose runs it
    repeats number for number, if any."""

    def rows_of(variant: str) -> Rows:
        return [r for e in plan.of(variant) if (r := answer(rows, e))]

    baseline = [r for r in rows_of("baseline") if r["status"] == OK]
    found, seen = [], []
    for first in (e for e in plan.variants() if e.group != TUNING):
        mine = [r for r in rows_of(first.variant) if r["status"] == OK]
        failed = len(rows_of(first.variant)) - len(mine)
        twin = next((name for name, theirs in seen if same_runs(mine, theirs, FINGERPRINT)), "")
        seen.append((f"{first.group}: {first.label}", mine))
        if mine or failed:
            found.append(
                summarize(
                    mine,
                    baseline,
                    COLUMNS,
                    name=first.variant,
                    group=first.group,
                    label=first.label,
                    metric=first.metric,
                    failed=failed,
                    same_as=twin,
                )
            )
    return found


def tuning(plan: Plan, rows: Rows) -> list[list[object]]:
    """Optimizer, rate, validation -ELBO (or why it failed) and the choice of each tuning run."""
    table = []
    for exp in (e for e in plan.experiments if e.group == TUNING):
        row, opt = answer(rows, exp), exp.params.train.optimizer
        score = (
            None
            if row is None
            else (float(row["val_neg_elbo"]) if row["status"] == OK else outcome(row))
        )
        table.append([opt.name, opt.learning_rate, score])
    best = {}
    for name, rate, score in table:
        if isinstance(score, float) and score < best.get(name, (math.inf,))[0]:
            best[name] = (score, rate)
    return [[n, r, s, "yes" if best.get(n, (0, None))[1] == r else ""] for n, r, s in table]


def outcome(row: dict[str, str]) -> str:
    """A failed row's status up to its first sentence's end (runs.csv keeps all of it)."""
    return row["status"].split(". ")[0].rstrip(".")


def summary_csv(found: list[Summary]) -> str:
    columns = sorted({c for s in found for c in s.means})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "variant",
            "group",
            "label",
            "seeds",
            "failed",
            "metric",
            "difference",
            "low",
            "high",
            "verdict",
            "same_as",
            *(f"{c}_{stat}" for c in columns for stat in ("mean", "sd")),
        ]
    )
    for s in found:
        i = s.interval
        effect = [f"{v:.6g}" for v in (i.difference, i.low, i.high)] if i else ["", "", ""]
        stats = [
            f"{getattr(s, a)[c]:.6g}" if c in s.means else ""
            for c in columns
            for a in ("means", "sds")
        ]
        writer.writerow(
            [
                s.name,
                s.group,
                s.label,
                s.n,
                s.failed,
                s.metric,
                *effect,
                s.verdict,
                s.same_as,
                *stats,
            ]
        )
    return out.getvalue()


def _why(row: dict[str, str], base: dict[str, str]) -> str:
    if row["verdict"] == "fails to train":
        return f"all {row['failed']} seeds diverged (NaN loss)"
    if row["same_as"]:
        return f"never acted: same runs as {row['same_as']}"
    if row["metric"] != "test_nll":
        return (
            f"judged on pixels: reconstruction MSE {float(row['recon_mse_grayscale_mean']):.4f}"
            f" against {float(base['recon_mse_grayscale_mean']):.4f}"
        )
    rate, dist = (
        float(row[f"{c}_mean"]) - float(base[f"{c}_mean"]) for c in ("rate", "distortion")
    )
    return (
        f"rate {rate:+.1f}, distortion {dist:+.1f} nats; "
        f"{float(row['active_units_mean']):.0f} active units"
    )


def tricks_table(summary: Rows) -> str:
    """The README's table, from summary.csv: every judged trick, most helpful first."""
    base = next(r for r in summary if r["variant"] == "baseline")
    judged = [r for r in summary if r["verdict"] not in ("baseline", "too few seeds yet")]
    judged.sort(key=lambda r: (r["metric"] != "test_nll", float(r["difference"] or math.inf)))

    def effect(r: dict[str, str]) -> str:
        d = 2 if r["metric"] == "test_nll" else 4
        low, mid, high = (float(r[c]) for c in ("low", "difference", "high"))
        return f"{mid:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]"

    lines = [
        [
            f"{r['group']}: {r['label']}",
            effect(r) if r["difference"] else "",
            r["verdict"],
            _why(r, base),
        ]
        for r in judged
    ]
    head = ["trick", f"Δ test NLL, nats [{LEVEL:.0%} CI]", "verdict", "why"]
    return tabulate(lines, head, tablefmt="github") + "\n"


def forest(found: list[Summary]) -> plt.Figure:
    """Effect on test NLL ± its interval per variant, sorted, zero marked."""
    judged = sorted(
        (s for s in found if s.interval and s.metric == "test_nll"),
        key=lambda s: s.interval.difference,
    )
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.34 * max(len(judged), 1)))
    for y, s in enumerate(judged):
        i = s.interval
        ax.errorbar(
            i.difference,
            y,
            xerr=[[i.difference - i.low], [i.high - i.difference]],
            fmt="o",
            color=COLOURS.get(i.verdict, "tab:gray"),
            capsize=3,
        )
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(
        range(len(judged)), [f"{s.group}: {s.label} (n={s.n})" for s in judged], fontsize=8
    )
    scale = ""
    if any(max(-s.interval.low, s.interval.high) > 4 * LINEAR_NATS for s in judged):
        low, high = (limit * 1.15 for limit in ax.get_xlim())
        ax.set_xscale("symlog", linthresh=LINEAR_NATS)  # small effects stay legible
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


def rate_distortion(found: list[Summary]) -> plt.Figure:
    """Mean rate and distortion per variant (± sd over seeds), lines of equal -ELBO, and every
    variant labelled where adjustText finds room."""
    points = [s for s in found if s.metric == "test_nll" and {"rate", "distortion"} <= set(s.means)]
    fig, ax = plt.subplots(figsize=(12, 9))
    xs, ys = (np.array([s.means[c] for s in points]) for c in ("rate", "distortion"))
    for s, x, y in zip(points, xs, ys, strict=True):
        ax.errorbar(
            x,
            y,
            xerr=np.nan_to_num(s.sds["rate"]),
            yerr=np.nan_to_num(s.sds["distortion"]),
            fmt="*" if s.name == "baseline" else "o",
            color=COLOURS.get(s.verdict if s.name != "baseline" else "baseline", "tab:blue"),
            markersize=12 if s.name == "baseline" else 5,
            elinewidth=0.8,
        )
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.set_autoscale_on(False)
    for total in MaxNLocator(6).tick_values(x0 + y0, x1 + y1)[1:-1]:
        ax.plot([x0, x1], [total - x0, total - x1], color="lightgray", linewidth=1, zorder=0)
        x = min(x1, total - y0)
        ax.annotate(
            f"-ELBO {total:g}", (x, total - x), fontsize=7, color="gray", ha="right", va="bottom"
        )
    texts = [ax.text(x, y, s.label, fontsize=7) for s, x, y in zip(points, xs, ys, strict=True)]
    if texts:
        adjust_text(
            texts,
            x=xs,
            y=ys,
            ax=ax,
            expand=(1.1, 1.8),
            force_explode=(0.2, 1.0),
            arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.5},
        )
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats (test set, mean over seeds)")
    ax.set_ylabel("distortion: -log p(x|z), nats")
    ax.set_title("Rate-distortion of every variant (star: baseline); grey lines: equal -ELBO")
    ax.grid(alpha=0.2)
    return fig


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with what stands between the ``name`` markers replaced by ``content``."""
    start, end = START.format(name), END.format(name)
    head, _, rest = text.partition(start)
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"no '{start}' ... '{end}' markers")
    return f"{head}{start}\n{content}{end}{tail}"
