"""The statistics of a study, pure functions of numbers: differences paired by seed with their
t and bootstrap intervals, the share of pairs an arm wins, one multiple-comparison correction
over a page's family of tests, Fisher's exact test of divergence counts, a seed spread with
its bootstrap interval, and the points of a validation curve a plan can measure. Every
measure is lower-is-better; a metric's name is the stage's own (the table below)."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 9999  # a bootstrap's, from a fixed seed: the same rows give the same interval
DIVERGED = "diverged"  # the measure of a stressed comparison: runs that diverged
CURVE = re.compile(r"^(epochs|seconds)_to_(\d+(?:\.\d+)?)$|^val_auc_(\d+)$")
NAN = math.nan


@dataclass(frozen=True)
class Metric:
    """A number a stage writes to its metrics.json under this table's key: how a page names
    it, its unit and decimals, and the stage (MLflow logs evaluate's with a ``test_`` prefix)."""

    label: str
    unit: str
    digits: int
    stage: str


METRICS = {
    "nll": Metric("test NLL", "nats", 2, "evaluate"),
    "neg_elbo": Metric("test -ELBO", "nats", 2, "evaluate"),
    "kl": Metric("rate (test KL)", "nats", 2, "evaluate"),
    "reconstruction": Metric("distortion (test reconstruction)", "nats", 2, "evaluate"),
    "active_units": Metric("active units", "", 0, "evaluate"),
    "recon_mse_grayscale": Metric("reconstruction MSE (grayscale)", "", 4, "evaluate"),
    "frechet_distance": Metric("Fréchet distance", "", 2, "evaluate"),
    "evaluate_seconds": Metric("evaluation time", "s", 0, "evaluate"),
    "val_neg_elbo": Metric("validation -ELBO (best epoch)", "nats", 2, "train"),
    "best_epoch": Metric("best epoch", "", 0, "train"),
    "epochs": Metric("epochs run", "", 0, "train"),
    "train_seconds": Metric("training time", "s", 0, "train"),
}


def metric(name: str) -> Metric:
    """The table's entry for ``name``, or that of a point of the validation curve."""
    if found := CURVE.match(name):
        kind, threshold, epochs = found.groups()
        if epochs:
            return Metric(f"mean validation -ELBO over epochs 1-{epochs}", "nats", 2, "train")
        return Metric(f"{kind} to validation -ELBO ≤ {threshold}", kind, 1, "train")
    if name not in METRICS:
        known = ", ".join([*METRICS, "epochs_to_<nats>", "seconds_to_<nats>", "val_auc_<epochs>"])
        raise ValueError(f"unknown measure {name!r}: use one of {known}")
    return METRICS[name]


def from_curve(name: str, history: list[dict[str, float]]) -> float | None:
    """Measure ``name`` (see `CURVE`) of one run's per-epoch history: the first epoch (or the
    training seconds up to its end) whose validation -ELBO is at most the threshold, or the
    mean validation -ELBO over the first epochs; None where the run never got there."""
    kind, threshold, epochs = CURVE.match(name).groups()
    if epochs:
        head = history[: int(epochs)]
        return (
            statistics.fmean(r["val_neg_elbo"] for r in head) if len(head) == int(epochs) else None
        )
    seconds = 0.0
    for row in history:
        seconds += row["epoch_time"]
        if row["val_neg_elbo"] <= float(threshold):
            return float(row["epoch"]) if kind == "epochs" else seconds
    return None


@dataclass(frozen=True)
class Effect:
    """Differences arm - reference over seed pairs: their mean, its t and percentile-bootstrap
    intervals, the t test's p-value (nan with fewer than two pairs), and the share of pairs
    where the arm is lower (ties count half: rliable's probability of improvement)."""

    n: int
    difference: float
    low: float
    high: float
    boot_low: float
    boot_high: float
    p: float
    improved: float


def paired(differences: list[float], level: float = LEVEL) -> Effect:
    """The paired analysis of per-seed ``differences``: a one-sample t test on them, and a
    bootstrap that resamples the pairs."""
    n = len(differences)
    mean = statistics.fmean(differences) if n else NAN
    improved = sum(1.0 if d < 0 else 0.5 if d == 0 else 0.0 for d in differences) / n if n else NAN
    if n < 2:
        return Effect(n, mean, NAN, NAN, NAN, NAN, NAN, improved)
    if statistics.pvariance(differences) == 0:  # every pair differs alike: no spread to test
        return Effect(n, mean, mean, mean, mean, mean, 1.0 if mean == 0 else 0.0, improved)
    test = stats.ttest_1samp(differences, 0.0)
    t = test.confidence_interval(level)
    boot = bootstrap(differences, np.mean, level)
    return Effect(n, mean, float(t.low), float(t.high), *boot, float(test.pvalue), improved)


def bootstrap(values: list[float], statistic, level: float = LEVEL) -> tuple[float, float]:
    """scipy's percentile bootstrap interval of ``statistic`` over ``values``, seeded."""
    found = stats.bootstrap((np.asarray(values),), statistic, confidence_level=level,
                            n_resamples=RESAMPLES, method="percentile",
                            random_state=np.random.default_rng(0)).confidence_interval  # fmt: skip
    return float(found.low), float(found.high)


def spread(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """The seed-to-seed standard deviation of ``values`` and its bootstrap interval (nan with
    fewer than three values)."""
    if len(values) < 3:
        return (statistics.stdev(values) if len(values) == 2 else NAN), NAN, NAN
    sd = statistics.stdev(values)
    if sd == 0:
        return 0.0, 0.0, 0.0
    return sd, *bootstrap(values, lambda x, axis=-1: np.std(x, ddof=1, axis=axis), level)


def divergence(arm: tuple[int, int], reference: tuple[int, int]) -> float:
    """Fisher's exact p-value of (diverged, runs) of an arm against its reference."""
    (k, n), (j, m) = arm, reference
    return float(stats.fisher_exact([[k, n - k], [j, m - j]]).pvalue)


def adjust(pvalues: list[float], method: str) -> list[float]:
    """``pvalues`` adjusted for their number (``holm``: Holm's step-down; ``fdr_bh``:
    Benjamini-Hochberg), statsmodels' implementation; nan entries stay nan, not counted."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [NAN] * len(pvalues)
    if tested:
        found = multipletests([pvalues[i] for i in tested], alpha=1 - LEVEL, method=method)[1]
        for i, p in zip(tested, found, strict=True):
            adjusted[i] = float(p)
    return adjusted


def verdict(n: int, difference: float, adjusted_p: float,
            words: tuple[str, str] = ("helps", "hurts")) -> str:  # fmt: skip
    """``words`` (lower, higher) where the adjusted p-value is below 1 - LEVEL, else why not."""
    if n < 2:
        return "too few pairs"
    if adjusted_p < 1 - LEVEL:
        return words[0] if difference < 0 else words[1]
    return "no measurable difference"
