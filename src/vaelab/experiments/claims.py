"""The report of a `report: claims` plan: the tutorial's three claims (a trick makes a better
model, that trains more stably and converges faster) measured per variant against the
baseline, each with its 95% interval and a verdict only where the interval excludes no change.

- quality: the variant's metric (test NLL) and the Fréchet distance of its samples;
- convergence: epochs and seconds until the validation -ELBO first comes within ``WITHIN``
  nats of the baseline's final value, from the histories the runner keeps;
- stability: the seed-to-seed spread of the metric (ratio of standard deviations, F interval)
  and the fraction of seeds that diverge at the stress rate. Variants of group ``lr-grid``
  train the baseline at rising learning rates; the stress rate is the lowest at which most of
  its seeds diverge. A variant named ``diverge-<variant>`` (group ``divergence``) re-runs
  ``<variant>`` with its rate raised as the baseline's was.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from scipy import stats
from tabulate import tabulate

from vaelab.core.atomic import write_text
from vaelab.core.params import Params
from vaelab.experiments.effects import LEVEL, Interval, welch
from vaelab.experiments.figures import Panel, learning_curves
from vaelab.experiments.plan import Experiment, Plan
from vaelab.experiments.report import END, START, header, replace_section
from vaelab.experiments.results import OK, Rows, answer, history_file
from vaelab.report.plots import save_figure

WITHIN = 1.0  # nats above the baseline's final validation -ELBO that count as converged
GRID, STRESS, PREFIX = "lr-grid", "divergence", "diverge-"
PAGE, SUMMARY, CURVES = "claims.md", "claims.csv", "learning_curves.png"


@dataclass(frozen=True)
class Run:
    exp: Experiment
    row: dict[str, str]
    history: list[dict[str, float]]  # empty for a diverged run

    @property
    def ok(self) -> bool:
        return self.row["status"] == OK

    def value(self, column: str) -> float:
        return float(self.row[column])


def runs(out: Path, plan: Plan, rows: Rows, variant: str) -> list[Run]:
    """The recorded runs of ``variant``, each with its kept history."""
    found = []
    for exp in (e for e in plan.experiments if e.variant == variant):
        row = answer(rows, exp)
        if row is None:
            continue
        path = history_file(out, exp)
        history = []
        if row["status"] == OK and path.exists():
            with path.open(newline="", encoding="utf-8") as handle:
                history = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
        found.append(Run(exp, row, history))
    return found


def converged(history: list[dict[str, float]], target: float) -> tuple[int, float] | None:
    """The first epoch whose validation -ELBO is at most ``target``, and the training seconds
    up to its end; None if none is."""
    seconds = 0.0
    for epoch in history:
        seconds += epoch["epoch_time"]
        if epoch["val_neg_elbo"] <= target:
            return int(epoch["epoch"]), seconds
    return None


def comparable(params: Params, base: Params) -> bool:
    """Whether validation -ELBO is in the baseline's units: the same likelihood on binary
    images (a Gaussian density or grayscale targets are other numbers)."""
    binary = params.prepare.binarize != "none", base.prepare.binarize != "none"
    return params.train.likelihood.kind == base.train.likelihood.kind and binary[0] == binary[1]


def sd_ratio(variant: list[float], baseline: list[float], level: float = LEVEL) -> Interval | None:
    """sd(variant) / sd(baseline) with its F interval (normal data); None if either side has
    fewer than 2 values or no spread."""
    if len(variant) < 2 or len(baseline) < 2:
        return None
    v, b = statistics.variance(variant), statistics.variance(baseline)
    if b == 0:
        return None
    ratio, tail = v / b, (1 - level) / 2
    dfs = (len(variant) - 1, len(baseline) - 1)
    low, high = ratio / stats.f.ppf(1 - tail, *dfs), ratio / stats.f.ppf(tail, *dfs)
    return Interval(math.sqrt(ratio), math.sqrt(low), math.sqrt(high))


def _effect(i: Interval | None, digits: int, words: tuple[str, str], centre: float = 0.0) -> str:
    """``i`` as "mid [low, high]", with ``words`` (better, worse) where it excludes ``centre``."""
    if i is None:
        return ""
    f = f"{'+' if centre == 0 else ''}.{digits}f"
    text = f"{i.difference:{f}} [{i.low:{f}}, {i.high:{f}}]"
    if i.high < centre:
        return f"{text} {words[0]}"
    return f"{text} {words[1]}" if i.low > centre else text


@dataclass(frozen=True)
class Measures:
    """One variant's per-seed values: its metric, the Fréchet distance, and (where its
    validation -ELBO is comparable and every seed converged) epochs and seconds to converge."""

    exp: Experiment
    base: str  # the variant it is compared with (itself for a baseline)
    failed: int
    values: dict[str, list[float]]
    never: int | None  # seeds that never converged; None: not comparable
    diverged: str  # "k of n" at the stress rate, or ""
    done: list[Run]  # the finished runs

    @property
    def n(self) -> int:
        return len(self.done)

    def versus(self, base: Measures) -> dict[str, Interval | None]:
        """Each measure's interval against ``base``, its metric being this variant's (the
        spread: a ratio of sds)."""
        theirs = base.values | {"metric": [r.value(self.exp.metric) for r in base.done]}
        found = {k: welch(v, theirs.get(k, [])) for k, v in self.values.items()}
        return found | {"spread": sd_ratio(self.values["metric"], theirs["metric"])}


def diverged(done: list[Run]) -> tuple[str, float | None]:
    """ "k of n" runs that diverged, and the others' mean validation -ELBO (None if none)."""
    elbo = [r.value("val_neg_elbo") for r in done if r.ok]
    return f"{len(done) - len(elbo)} of {len(done)}", statistics.fmean(elbo) if elbo else None


def stress_rate(plan: Plan, every: dict[str, list[Run]]) -> tuple[float | None, list[list]]:
    """The lowest grid rate at which most baseline seeds diverge, and the grid's table (rate,
    "k of n" diverged, the others' mean validation -ELBO)."""
    table, found = [], None
    grid = [e for e in plan.variants() if e.group == GRID]
    for first in sorted(grid, key=lambda e: e.params.train.optimizer.learning_rate):
        done = every[first.variant]
        if not done:
            continue
        rate = first.params.train.optimizer.learning_rate
        table.append([rate, *diverged(done)])
        if found is None and sum(not r.ok for r in done) > len(done) / 2:
            found = rate
    return found, table


def measure(
    plan: Plan, every: dict[str, list[Run]], rate: float | None, grid: list[list]
) -> tuple[list[Measures], dict[str, float]]:
    """Every variant's measures (the baseline first; its divergences are the ``grid``'s at the
    stress ``rate``), and the convergence target (nats) of each baseline a variant is compared
    with (``against``)."""
    targets = {}
    for name in dict.fromkeys(plan.baseline_of(e) for e in plan.variants()):
        final = [r.value("val_neg_elbo") for r in every.get(name, []) if r.ok]
        targets[name] = statistics.fmean(final) + WITHIN if final else math.inf
    found = []
    for first in plan.variants():
        mine = every[first.variant]
        if first.group in (GRID, STRESS) or not mine:
            continue
        good = [r for r in mine if r.ok]
        values = {"metric": [r.value(first.metric) for r in good],
                  "frechet": [r.value("frechet_distance") for r in good]}  # fmt: skip
        base = plan.baseline_of(first)
        reached = [converged(r.history, targets[base]) for r in good]
        never = sum(r is None for r in reached) if comparable(first.params, plan.base) else None
        if never == 0 and good:
            values |= {"epochs": [e for e, _ in reached], "seconds": [s for _, s in reached]}
        stressed = every.get(PREFIX + first.variant, [])
        stress = diverged(stressed)[0] if stressed else ""
        if first.variant == "baseline":  # its stressed runs are the grid's at the stress rate
            stress = next((line[1] for line in grid if line[0] == rate), "")
        found.append(Measures(first, base, len(mine) - len(good), values, never, stress, good))
    return found, targets


def baselines(found: list[Measures]) -> dict[str, Measures]:
    """The measured baselines, by name."""
    return {m.base: m for m in found if m.base == m.exp.variant}


def table(found: list[Measures]) -> str:
    """One line per variant: each baseline's means (sd), each other's differences from its
    own baseline's (none before that has a run)."""
    bases, lines = baselines(found), []
    for m in found:
        if m.exp.variant in bases:
            cells = [_mean(m.values.get(k), d) for k, d in
                     (("metric", 2), ("frechet", 2), ("epochs", 1), ("seconds", 0))]  # fmt: skip
            spread = f"sd {statistics.stdev(m.values['metric']):.2f}" if m.n > 1 else ""
        else:
            i = m.versus(bases[m.base]) if m.base in bases else {}
            cells = [_effect(i.get("metric"), 2 if m.exp.metric == "test_nll" else 4, BETTER),
                     _effect(i.get("frechet"), 2, BETTER), _effect(i.get("epochs"), 1, FASTER),
                     _effect(i.get("seconds"), 0, FASTER)]  # fmt: skip
            spread = _effect(i.get("spread"), 2, ("steadier", "less steady"), 1.0)
            if m.exp.metric != "test_nll":
                cells[0] = f"{m.exp.metric}: {cells[0]}"
        if m.never is None:
            cells[2:] = ["not comparable", ""]
        elif m.never:
            cells[2:] = [f"never in {m.never} of {m.n} seeds", ""]
        seeds = f"{m.n}" + (f" (+{m.failed} diverged)" if m.failed else "")
        lines.append([f"{m.exp.group}: {m.exp.label}", str(m.exp.params.train.epochs), seeds,
                      *cells, spread, m.diverged])  # fmt: skip
    head = ["trick", "epochs", "seeds", "Δ test NLL, nats", "Δ Fréchet distance",
            "Δ epochs to converge", "Δ seconds to converge", "NLL sd ÷ baseline's",
            "diverged at stress rate"]  # fmt: skip
    return tabulate(lines, head, tablefmt="github", disable_numparse=True) + "\n"


BETTER, FASTER = ("better", "worse"), ("faster", "slower")


def _mean(values: list[float] | None, digits: int) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else ""


def summary_csv(found: list[Measures], targets: dict[str, float]) -> str:
    """Per variant: its seeds, each measure's mean (the spread: the metric's sd), its interval
    against its baseline, which it names, and that baseline's convergence target."""
    bases = baselines(found)
    keys = ("metric", "frechet", "epochs", "seconds", "spread")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["variant", "group", "label", "metric", "seeds", "failed", "never",
                     "diverged", *(f"{k}_{x}" for k in keys for x in ("mean", "value", "low",
                     "high")), "against", "target"])  # fmt: skip
    for m in found:
        base = bases.get(m.base)
        intervals, cells = (m.versus(base) if base and base is not m else {}), []
        centre = {k: statistics.fmean(v) for k, v in m.values.items() if v}
        if m.n > 1:
            centre["spread"] = statistics.stdev(m.values["metric"])
        for k in keys:
            i = intervals.get(k)
            numbers = (centre.get(k), *((i.difference, i.low, i.high) if i else (None,) * 3))
            cells += ["" if x is None else f"{x:.6g}" for x in numbers]
        never = "" if m.never is None else m.never
        writer.writerow([m.exp.variant, m.exp.group, m.exp.label, m.exp.metric, m.n, m.failed,
                         never, m.diverged, *cells, m.base, f"{targets[m.base]:.6g}"])  # fmt: skip
    return out.getvalue()


def panels(plan: Plan, every: dict[str, list[Run]], targets: dict[str, float]) -> list[Panel]:
    """The learning-curve panels: each variant whose -ELBO is comparable with its baseline's
    and has a kept history."""
    histories = {
        e.variant: [r.history for r in every[e.variant] if r.history]
        for e in plan.variants()
        if e.group not in (GRID, STRESS) and comparable(e.params, plan.base)
    }
    shown = []
    for exp in plan.variants():
        base = plan.baseline_of(exp)
        if histories.get(exp.variant) and base != exp.variant:
            title = f"{exp.group}: {exp.label}, {exp.params.train.epochs} epochs"
            shown.append(Panel(title, exp.label, histories[exp.variant], base,
                               histories.get(base, []), targets[base]))  # fmt: skip
    return shown


def stressed(plan: Plan, every: dict[str, list[Run]]) -> list[str]:
    """The table of each trick at the stress rate: its rate, seeds diverged, the others'
    validation -ELBO (nothing before any has run)."""
    lines, variants = [], {e.variant: e for e in plan.variants()}
    for exp in (e for e in variants.values() if e.group == STRESS):
        trick = variants[exp.variant.removeprefix(PREFIX)]
        if done := every[exp.variant]:
            rate = exp.params.train.optimizer.learning_rate
            epochs = exp.params.train.epochs
            lines.append([f"{trick.group}: {trick.label}", epochs, rate, *diverged(done)])
    if not lines:
        return []
    head = ["trick", "epochs", "learning rate", "diverged", "validation -ELBO of the others"]
    table_ = tabulate(lines, head, tablefmt="github", floatfmt=("", "", "g", "", ".2f"),
                      missingval="")  # fmt: skip
    return ["Each trick at its own rate raised as the baseline's was:", "", table_, ""]


def cost(plan: Plan, rows: Rows) -> list[str]:
    """Machine time per profile (epochs, last stage): runs done, their hours, the median
    minutes per run and the runs still to go (nothing before any run)."""
    done: dict[tuple[int, str], list[float]] = defaultdict(list)
    todo: Counter[tuple[int, str]] = Counter()
    for exp in plan.experiments:
        key = (exp.params.train.epochs, exp.stage)
        if (row := answer(rows, exp)) is None:
            todo[key] += 1
        else:
            done[key].append(float(row["wall_seconds"]))
    if not done:
        return []
    lines = []
    for epochs, stage in sorted(done.keys() | todo.keys()):
        seconds, left = done[(epochs, stage)], todo[(epochs, stage)]
        median = statistics.median(seconds) if seconds else None
        per_run, to_go = (median / 60, left * median / 3600) if median is not None else (None,) * 2
        lines.append([f"{epochs} epochs, up to {stage}", len(seconds), sum(seconds) / 3600,
                      per_run, left, to_go])  # fmt: skip
    head = ["profile", "runs done", "hours", "minutes per run (median)", "runs to go",
            "hours to go (at that median)"]  # fmt: skip
    table_ = tabulate(lines, head, tablefmt="github", floatfmt=("", "", ".1f", ".1f", "", ".1f"),
                      missingval="")  # fmt: skip
    return ["### Machine time", "", table_, ""]


def finals(found: list[Measures], targets: dict[str, float]) -> str:
    """Each measured baseline's final validation -ELBO, in words."""
    return "; ".join(
        f"{m.exp.group}: {m.exp.label} at {m.exp.params.train.epochs} epochs, "
        f"{targets[name] - WITHIN:.2f} nats"
        for name, m in baselines(found).items()
    )


def apart(found: list[Measures]) -> list[str]:
    """The line naming the tricks the learning curves leave out (their -ELBO in other units)."""
    names = [f"{m.exp.group}: {m.exp.label}" for m in found if m.never is None]
    if not names:
        return []
    return [f"Not drawn, their validation -ELBO being in other units: {'; '.join(names)}."]


def render(out: Path, plan: Plan, rows: Rows) -> Path:
    """claims.csv, the learning curves and claims.md's generated part; returns the page."""
    every = {e.variant: runs(out, plan, rows, e.variant) for e in plan.variants()}
    rate, grid = stress_rate(plan, every)
    found, targets = measure(plan, every, rate, grid)
    write_text(out / SUMMARY, summary_csv(found, targets))
    shown = panels(plan, every, targets)
    if shown:
        save_figure(learning_curves(shown, WITHIN), out / CURVES)
    based = any(m.exp.variant == "baseline" for m in found)
    generated = [
        *header(plan, rows, lambda e: e.group not in (GRID, STRESS)),
        "",
        f"Converged: validation -ELBO within {WITHIN:g} nat of its baseline's final value "
        f"({finals(found, targets)}). Intervals are {LEVEL:.0%}: Welch's for differences of "
        "means, the F distribution's for the ratio of standard deviations; a word only where "
        "the interval excludes no change."
        if based
        else "No finished run of the baseline yet: nothing to compare with.",
        "",
        table(found) if based else "",
        *([f"![learning curves]({CURVES})", "", *apart(found), ""] if shown else []),
        "### The stress rate: the baseline at rising learning rates",
        "",
        tabulate(
            grid,
            ["learning rate", "diverged", "validation -ELBO of the others"],
            tablefmt="github",
            floatfmt=("g", "", ".2f"),
            missingval="",
        )
        if grid
        else "not run yet",
        "",
        f"Stress rate: {rate:g}." if rate else "No rate on the grid made most seeds diverge yet.",
        "",
        *stressed(plan, every),
        *cost(plan, rows),
        f"In numbers: [{SUMMARY}]({SUMMARY}); every run: [runs.csv](runs.csv); every epoch: "
        "[histories/](histories).",
        "",
    ]
    page = out / PAGE
    empty = f"# The tutorial's claims\n\n{START.format('claims')}\n{END.format('claims')}\n"
    text = page.read_text() if page.exists() else empty
    write_text(page, replace_section(text, "claims", "\n".join(generated)))
    return page
