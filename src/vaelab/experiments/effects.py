"""Effects of a job's variants against its baseline: mean ± sd over seeds, and the difference
of means with scipy's 95% Welch interval. Every metric is lower-is-better (nats, squared
error), and a variant "helps" or "hurts" only where the interval excludes zero."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

from vaelab.experiments.plan import Experiment
from vaelab.experiments.results import Rows

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


def welch(variant: list[float], baseline: list[float], level: float = LEVEL) -> Interval | None:
    """Interval for mean(variant) - mean(baseline); None with fewer than 2 values a side."""
    if len(variant) < 2 or len(baseline) < 2:
        return None
    difference = statistics.fmean(variant) - statistics.fmean(baseline)
    if statistics.variance(variant) + statistics.variance(baseline) == 0:
        return Interval(difference, difference, difference)  # scipy's would be nan
    found = stats.ttest_ind(variant, baseline, equal_var=False).confidence_interval(level)
    return Interval(difference, float(found.low), float(found.high))


@dataclass(frozen=True)
class Summary:
    """One variant (``exp``, its first experiment) over its seeds: per-column mean and sd, and
    its effect on ``exp.metric``."""

    exp: Experiment
    n: int
    means: dict[str, float]
    sds: dict[str, float]
    interval: Interval | None
    failed: int = 0  # seeds whose run diverged; not in n
    same_as: str = ""  # the variant whose runs this one's equal, seed for seed

    @property
    def verdict(self) -> str:
        if self.exp.variant == "baseline":
            return "baseline"
        if self.n == 0 and self.failed:
            return "fails to train"
        return self.interval.verdict if self.interval else "too few seeds yet"


def same_runs(mine: Rows, theirs: Rows, columns: tuple) -> bool:
    """Whether at least two runs of a variant each equal, in every one of ``columns``, the
    other's run at the same seed: its switch never acted."""
    other = {row["seed"]: [row[c] for c in columns] for row in theirs}
    return len(mine) >= 2 and all(other.get(r["seed"]) == [r[c] for c in columns] for r in mine)


def summarize(exp: Experiment, rows: Rows, baseline: Rows, columns: tuple, **more) -> Summary:
    """``more``: the variant's ``failed`` seeds and the variant it is the ``same_as``."""
    values = {c: [float(r[c]) for r in rows if r.get(c)] for c in columns}
    values = {c: v for c, v in values.items() if v}
    means = {c: statistics.fmean(v) for c, v in values.items()}
    sds = {c: statistics.stdev(v) if len(v) > 1 else math.nan for c, v in values.items()}
    metric, interval = exp.metric, None
    if exp.variant != "baseline":
        interval = welch([float(r[metric]) for r in rows], [float(r[metric]) for r in baseline])
    return Summary(exp, len(rows), means, sds, interval, **more)
