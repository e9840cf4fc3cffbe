"""Effects of the ablation's variants against the baseline: mean ± standard deviation over
seeds, and the difference of means with a 95% Welch interval (unequal variances and counts).

A variant "helps" or "hurts" only where the interval excludes zero; the metrics are all
lower-is-better (nats, squared error).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    difference: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.high < 0:
            return "helps"
        if self.low > 0:
            return "hurts"
        return "no measurable difference"


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), sd


def welch(variant: list[float], baseline: list[float], level: float = LEVEL) -> Interval | None:
    """Interval for mean(variant) - mean(baseline); None with fewer than 2 values a side."""
    if len(variant) < 2 or len(baseline) < 2:
        return None
    (m1, s1), (m2, s2) = mean_sd(variant), mean_sd(baseline)
    v1, v2 = s1**2 / len(variant), s2**2 / len(baseline)
    difference = m1 - m2
    if v1 + v2 == 0:
        return Interval(difference, difference, difference)
    dof = (v1 + v2) ** 2 / (v1**2 / (len(variant) - 1) + v2**2 / (len(baseline) - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(v1 + v2)
    return Interval(difference, difference - half, difference + half)


@dataclass(frozen=True)
class Summary:
    """One variant over its seeds: per-column mean and sd, and its effect on ``metric``."""

    name: str
    group: str
    label: str
    metric: str
    n: int
    means: dict[str, float]
    sds: dict[str, float]
    interval: Interval | None
    failed: int = 0  # seeds whose run failed (e.g. diverged); not in n
    same_as: str = ""  # the variant whose runs this one's equal, seed for seed

    @property
    def verdict(self) -> str:
        if self.name == "baseline":
            return "baseline"
        if self.n == 0 and self.failed:
            return "fails to train"
        return self.interval.verdict if self.interval else "too few seeds yet"


def same_runs(
    variant_rows: list[dict[str, str]], other_rows: list[dict[str, str]], columns: tuple[str, ...]
) -> bool:
    """Whether at least two runs of a variant each equal, in every one of ``columns``, the
    other's run at the same seed: its switch never acted."""
    theirs = {row["seed"]: [row[c] for c in columns] for row in other_rows}
    return len(variant_rows) >= 2 and all(
        theirs.get(row["seed"]) == [row[c] for c in columns] for row in variant_rows
    )


def summarize(
    variant_rows: list[dict[str, str]],
    baseline_rows: list[dict[str, str]],
    columns: tuple[str, ...],
    failed: int = 0,
    **about: str,
) -> Summary:
    """``about``: name, group, label, metric and same_as of the variant; ``failed``: its failed
    seeds."""
    means, sds = {}, {}
    for column in columns:
        values = [float(row[column]) for row in variant_rows if row.get(column)]
        if values:
            means[column], sds[column] = mean_sd(values)
    metric = about["metric"]
    interval = None
    if about["name"] != "baseline":
        interval = welch(
            [float(row[metric]) for row in variant_rows],
            [float(row[metric]) for row in baseline_rows],
        )
    return Summary(
        n=len(variant_rows), means=means, sds=sds, interval=interval, failed=failed, **about
    )
