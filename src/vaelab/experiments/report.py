"""The ablation's report, rendered from its plan and runs.csv: summary.csv; from it the
tricks table (trick, effect with its interval, verdict, why), which the README embeds; the
generated part of ablation.md; the forest plot of the effects and the rate-distortion plane."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter
from tabulate import tabulate

from vaelab.core.atomic import write_text
from vaelab.core.paths import ABLATION
from vaelab.experiments import figures
from vaelab.experiments.effects import LEVEL, Summary, same_runs, summarize
from vaelab.experiments.figures import RatePoint
from vaelab.experiments.plan import Experiment, Plan
from vaelab.experiments.results import METRICS, OK, Rows, answer
from vaelab.report.plots import save_figure

TUNING = "tuning"  # the group of the learning-rate tuning runs: a table of its own
FINGERPRINT = tuple(m for m, _, _ in METRICS if not m.endswith("_seconds"))
COLUMNS = (*(m for m, stage, _ in METRICS if stage == "evaluate"), "train_seconds", "best_epoch")
HEAD = ("variant", "group", "label", "seeds", "failed", "metric", "difference", "low", "high")
COLOURS = {"helps": "tab:green", "hurts": "tab:red", "baseline": "black"}
LINEAR_NATS = 1.0  # the forest plot turns logarithmic beyond this once some effect is large
START, END = "<!-- {} generated: start -->", "<!-- {} generated: end -->"
WHY = ("recon_mse_grayscale", "rate", "distortion", "active_units")  # what a row's "why" quotes
README = Path("README.md")  # its tricks table is the committed ablation's


def summaries(plan: Plan, rows: Rows) -> list[Summary]:
    """Each variant with a finished or diverged seed, and the earlier variant whose runs it
    repeats number for number, if any."""

    def rows_of(variant: str) -> Rows:
        return [r for e in plan.experiments if e.variant == variant and (r := answer(rows, e))]

    baseline = [r for r in rows_of("baseline") if r["status"] == OK]
    found, seen = [], []
    for first in (e for e in plan.variants() if e.group != TUNING):
        mine = rows_of(first.variant)
        good = [r for r in mine if r["status"] == OK]
        twin = next((name for name, theirs in seen if same_runs(good, theirs, FINGERPRINT)), "")
        seen.append((f"{first.group}: {first.label}", good))
        if mine:
            more = {"failed": len(mine) - len(good), "same_as": twin}
            found.append(summarize(first, good, baseline, COLUMNS, **more))
    return found


def summary_csv(found: list[Summary]) -> str:
    stats = [
        f"{c}_{k}" for c in sorted({c for s in found for c in s.means}) for k in ("mean", "sd")
    ]
    base = next((s for s in found if s.exp.variant == "baseline"), None)
    out = io.StringIO()
    writer = csv.DictWriter(out, [*HEAD, "verdict", "same_as", *stats], lineterminator="\n")
    writer.writeheader()
    for s in found:
        e, i = s.exp, s.interval
        row = dict(zip(HEAD, (e.variant, e.group, e.label, s.n, s.failed, e.metric), strict=False))
        row |= {k: f"{getattr(i, k):.6g}" for k in HEAD[6:]} if i else {}
        if not i and s.exp.variant != "baseline" and e.metric in s.means and base:
            row["difference"] = f"{s.means[e.metric] - base.means[e.metric]:.6g}"  # one seed
        row |= {f"{c}_mean": f"{m:.6g}" for c, m in s.means.items()}
        row |= {f"{c}_sd": f"{sd:.6g}" for c, sd in s.sds.items()}
        writer.writerow({**row, "verdict": s.verdict, "same_as": s.same_as})
    return out.getvalue()


def _digits(metric: str) -> int:
    """Decimals a metric's differences are shown with: nats to 2, squared errors to 4."""
    return 2 if metric == "test_nll" else 4


def _why(row: dict[str, str], base: dict[str, str] | None) -> str:
    if row["verdict"] == "fails to train":
        return f"all {row['failed']} seeds diverged (NaN loss)"
    if row["same_as"]:
        return f"never acted: same runs as {row['same_as']}"
    if base is None:
        metric = row["metric"]
        name = "test NLL" if metric == "test_nll" else metric
        return f"no baseline run yet: {name} {float(row[f'{metric}_mean']):.{_digits(metric)}f}"
    mean = {c: (float(row[f"{c}_mean"]), float(base[f"{c}_mean"])) for c in WHY if row[f"{c}_mean"]}
    if row["metric"] != "test_nll":
        return "judged on pixels: reconstruction MSE {:.4f} against {:.4f}".format(*mean[WHY[0]])
    (rate, r0), (dist, d0), (units, _) = (mean[c] for c in WHY[1:])
    return f"rate {rate - r0:+.1f}, distortion {dist - d0:+.1f} nats; {units:.0f} active units"


def tricks_table(summary: Rows) -> str:
    """The README's table, from summary.csv: every judged trick, most helpful first."""
    base = next((r for r in summary if r["variant"] == "baseline"), None)
    judged = [r for r in summary if r["verdict"] != "baseline"
              and (r["difference"] or r["verdict"] == "fails to train" or not base)]  # fmt: skip
    judged.sort(key=lambda r: (r["metric"] != "test_nll", float(r["difference"] or math.inf)))

    def effect(r: dict[str, str]) -> str:
        if not r["difference"]:
            return ""
        d = _digits(r["metric"])
        if not r["low"]:
            return f"{float(r['difference']):+.{d}f} (one seed: no interval)"
        low, mid, high = (float(r[c]) for c in ("low", "difference", "high"))
        return f"{mid:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]"

    lines = [
        [f"{r['group']}: {r['label']}", effect(r), r["verdict"], _why(r, base)] for r in judged
    ]
    if not lines:
        return "No variant has run against the baseline yet.\n"
    head = ["trick", f"Δ test NLL, nats [{LEVEL:.0%} CI]", "verdict", "why"]
    return tabulate(lines, head, tablefmt="github") + "\n"


def tuning(plan: Plan, rows: Rows) -> str:
    """Optimizer, rate, validation -ELBO (or why it diverged), and the best rate of each."""
    table = []
    for exp in (e for e in plan.experiments if e.group == TUNING):
        row, opt = answer(rows, exp), exp.params.train.optimizer
        score = row and (float(row["val_neg_elbo"]) if row["status"] == OK else outcome(row))
        table.append([opt.name, opt.learning_rate, score])
    scored = [line for line in table if isinstance(line[2], float)]
    for line in table:
        best = min((t for t in scored if t[0] == line[0]), key=lambda t: t[2], default=None)
        line.append("yes" if best is line else "")
    head = ["optimizer", "learning rate", "validation -ELBO", "chosen"]
    return tabulate(table, head, tablefmt="github", missingval="")


def outcome(row: dict[str, str]) -> str:
    """A failed row's status up to its first sentence's end (runs.csv keeps all of it)."""
    return row["status"].split(". ")[0].rstrip(".")


def forest(found: list[Summary]) -> plt.Figure | None:
    """Effect on test NLL ± its interval per variant, sorted, zero marked; None before any."""
    judged = [s for s in found if s.interval and s.exp.metric == "test_nll"]
    if not judged:
        return None
    judged.sort(key=lambda s: s.interval.difference)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.34 * max(len(judged), 1)))
    for y, s in enumerate(judged):
        i = s.interval
        bar = [[i.difference - i.low], [i.high - i.difference]]
        ax.errorbar(
            i.difference, y, xerr=bar, fmt="o", color=COLOURS.get(i.verdict, "gray"), capsize=3
        )
    ax.axvline(0.0, color="black", linewidth=1)
    labels = [f"{s.exp.group}: {s.exp.label} (n={s.n})" for s in judged]
    ax.set_yticks(range(len(judged)), labels, fontsize=8)
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
    """Mean rate and distortion per variant (± sd over seeds), coloured by verdict."""
    points = []
    for s in found:
        if s.exp.metric == "test_nll" and "rate" in s.means:
            base = s.exp.variant == "baseline"
            colour = COLOURS.get("baseline" if base else s.verdict, "tab:blue")
            sds = (float(np.nan_to_num(s.sds[c])) for c in ("rate", "distortion"))
            points.append(RatePoint(s.exp.label, s.means["rate"], s.means["distortion"], *sds,
                                    colour=colour, star=base))  # fmt: skip
    return figures.rate_distortion(
        points, "Rate-distortion of every variant (star: baseline)", "test set, mean over seeds"
    )


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with what stands between the ``name`` markers replaced by ``content``."""
    start, end = START.format(name), END.format(name)
    head, _, rest = text.partition(start)
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"no '{start}' ... '{end}' markers")
    return f"{head}{start}\n{content}{end}{tail}"


def header(
    plan: Plan, rows: Rows, listed: Callable[[Experiment], bool] = lambda e: True
) -> list[str]:
    """The plan, progress, time, machines and the ``listed`` runs that diverged."""
    done = sum(answer(rows, e) is not None for e in plan.experiments)
    hours = sum(float(row["wall_seconds"]) for row in rows) / 3600
    cpus = "; ".join(sorted({row["cpu"] for row in rows})) or "none yet"
    failed = "; ".join(
        f"`{e.name}` {outcome(r)}"
        for r in rows
        if r["status"] != OK
        for e in plan.experiments
        if answer([r], e) and listed(e)
    )
    base = plan.experiments[0].params  # the plan's profile over its baseline
    return [
        "**Plan**: [variants.yaml](variants.yaml) over [baseline.yaml](baseline.yaml); test NLL "
        f"with k = {base.evaluate.importance_samples} on all {base.prepare.test_size:,} test "
        "images. `base.seed` draws the validation split, the test set's binarization, the "
        "initial weights, the shuffling and the binarization and augmentation draws.",
        "",
        f"**Progress**: {done} of {len(plan.experiments)} runs done ({hours:.1f} h of wall "
        f"time) on {cpus}.",
        *(["", f"**Failed runs** (diverged: a result): {failed}."] if failed else []),
    ]


def render(out: Path, plan: Plan, rows: Rows) -> Path:
    """summary.csv, both figures, ablation.md's generated part and, for the committed
    ablation, the README's tricks table; returns the page."""
    found = summaries(plan, rows)
    text = summary_csv(found)
    write_text(out / "summary.csv", text)
    table = tricks_table(list(csv.DictReader(io.StringIO(text))))
    shown = []
    if effects := forest(found):
        save_figure(effects, out / "forest.png")
        shown = ["![forest plot](forest.png)", ""]
    save_figure(rate_distortion(found), out / "rate_distortion.png")
    generated = [
        *header(plan, rows),
        "",
        table,
        *shown,
        "![rate-distortion plane](rate_distortion.png)",
        "",
        "In numbers: [summary.csv](summary.csv); every run: [runs.csv](runs.csv).",
        "",
    ]
    if any(e.group == TUNING for e in plan.experiments):
        generated += ["### Learning rates of the optimizers (seed 1, validation -ELBO)", "",
                      tuning(plan, rows), ""]  # fmt: skip
    page = out / "ablation.md"
    empty = f"# The trick ablation\n\n{START.format('ablation')}\n{END.format('ablation')}\n"
    text = page.read_text() if page.exists() else empty
    write_text(page, replace_section(text, "ablation", "\n".join(generated)))
    if out.resolve() == ABLATION.resolve() and README.exists():
        write_text(README, replace_section(README.read_text(), "tricks", table))
    return page
