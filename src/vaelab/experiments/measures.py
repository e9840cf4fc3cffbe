"""The statistics of a study, pure functions of numbers: paired differences by seed with
their t interval and p-value, one multiple-comparison correction over a page's family of
tests, the exact paired test of divergence counts, and epochs to a fixed validation
threshold. Every measure is lower-is-better; its name is the one table below."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95
DIVERGED = "diverged"  # the measure of a stressed comparison: runs that diverged
EPOCHS_TO = re.compile(r"^epochs_to_(\d+(?:\.\d+)?)$")  # first epoch of val -ELBO <= that


@dataclass(frozen=True)
class Metric:
    """A number a run records: how a page names it, its unit and decimals, and the stage
    metrics file and key it is read from (its column and its MLflow metric are its name)."""

    label: str
    unit: str
    digits: int
    stage: str
    key: str


METRICS = {
    "test_nll": Metric("test NLL", "nats", 2, "evaluate", "nll"),
    "test_neg_elbo": Metric("test -ELBO", "nats", 2, "evaluate", "neg_elbo"),
    "test_kl": Metric("rate (test KL)", "nats", 2, "evaluate", "kl"),
    "test_reconstruction": Metric("distortion", "nats", 2, "evaluate", "reconstruction"),
    "test_active_units": Metric("active units", "", 0, "evaluate", "active_units"),
    "test_recon_mse_grayscale": Metric(
        "reconstruction MSE (grayscale test images)", "", 4, "evaluate", "recon_mse_grayscale"
    ),
    "test_frechet_distance": Metric("Fréchet distance", "", 2, "evaluate", "frechet_distance"),
    "best_val_neg_elbo": Metric("validation -ELBO", "nats", 2, "train", "val_neg_elbo"),
    "best_epoch": Metric("best epoch", "", 0, "train", "best_epoch"),
    "epochs_run": Metric("epochs run", "", 0, "train", "epochs"),
    "train_seconds": Metric("training time", "s", 0, "train", "train_seconds"),
    "evaluate_seconds": Metric("evaluation time", "s", 0, "evaluate", "seconds"),
}


def metric(name: str) -> Metric:
    """The table's entry for ``name``, or the one of an ``epochs_to_<nats>`` measure."""
    if found := EPOCHS_TO.match(name):
        return Metric(f"epochs to validation -ELBO ≤ {found[1]}", "epochs", 1, "train", name)
    if name not in METRICS:
        known = ", ".join([*METRICS, "epochs_to_<nats>"])
        raise ValueError(f"unknown measure {name!r}: use one of {known}")
    return METRICS[name]


@dataclass(frozen=True)
class Effect:
    """Differences arm - reference over seed pairs: their mean, t interval and p-value (nan
    with fewer than two pairs), and the share of pairs where the arm is lower (ties half)."""

    n: int
    difference: float
    low: float
    high: float
    p: float
    improved: float


def paired(differences: list[float], level: float = LEVEL) -> Effect:
    """The paired t analysis of per-seed ``differences`` (a one-sample t test on them)."""
    n = len(differences)
    if n == 0:
        return Effect(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(differences)
    improved = sum(1.0 if d < 0 else 0.5 if d == 0 else 0.0 for d in differences) / n
    if n < 2:
        return Effect(n, mean, math.nan, math.nan, math.nan, improved)
    if statistics.pvariance(differences) == 0:  # every pair differs alike: scipy gives nan
        return Effect(n, mean, mean, mean, 1.0 if mean == 0 else 0.0, improved)
    test = stats.ttest_1samp(differences, 0.0)
    interval = test.confidence_interval(level)
    return Effect(n, mean, float(interval.low), float(interval.high), float(test.pvalue),
                  improved)  # fmt: skip


def paired_divergence(arm: list[bool], reference: list[bool]) -> float:
    """Exact McNemar p-value of diverged (True) runs, seed pair by seed pair: a binomial test
    of the discordant pairs (1.0 when there are none)."""
    only_arm = sum(a and not r for a, r in zip(arm, reference, strict=True))
    only_reference = sum(r and not a for a, r in zip(arm, reference, strict=True))
    if only_arm + only_reference == 0:
        return 1.0
    return float(stats.binomtest(only_arm, only_arm + only_reference).pvalue)


def adjust(pvalues: list[float], method: str) -> list[float]:
    """``pvalues`` adjusted for their number (``holm``: Holm's step-down; ``fdr_bh``:
    Benjamini-Hochberg), statsmodels' implementation; nan entries stay nan, not counted."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    if tested:
        found = multipletests([pvalues[i] for i in tested], alpha=1 - LEVEL, method=method)[1]
        for i, p in zip(tested, found, strict=True):
            adjusted[i] = float(p)
    return adjusted


def verdict(effect: Effect, adjusted_p: float, words: tuple[str, str] = ("helps", "hurts")) -> str:
    """``words`` (lower, higher) where the adjusted p-value is below 1 - LEVEL, else why not."""
    if effect.n < 2:
        return "too few pairs"
    if adjusted_p < 1 - LEVEL:
        return words[0] if effect.difference < 0 else words[1]
    return "no measurable difference"


def epochs_to(history: list[dict[str, float]], threshold: float) -> int | None:
    """The first epoch whose validation -ELBO is at most ``threshold``; None if none is."""
    return next((int(row["epoch"]) for row in history if row["val_neg_elbo"] <= threshold), None)
