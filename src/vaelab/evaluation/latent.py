"""Posterior-collapse diagnostics, the usefulness of the latent space, and the per-dimension
table (results/evaluate/latent_dims.csv) that the figures stage reads back."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from vaelab.core.errors import DataFileError

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016
_REEVALUATE = "Restore it with `dvc checkout` or re-run `dvc repro evaluate`"


def activity(z_mean: np.ndarray) -> np.ndarray:
    """Cov_x(E_q[z_u | x]) for every latent unit u: the variance of the posterior means."""
    return np.var(z_mean.astype(np.float64), axis=0)


def is_active(act: np.ndarray) -> np.ndarray:
    return act > ACTIVE_THRESHOLD


def latent_classifier_accuracy(
    z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> float:
    """Test accuracy of a logistic regression fit on the training set's latent means."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    clf.fit(z_train, y_train)
    return float(clf.score(z_test, y_test))


def latent_table(kl: np.ndarray, act: np.ndarray) -> str:
    """CSV of dim, mean KL, activity and whether the unit is active."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dim", "kl", "activity", "active"])
    for dim, (k, a) in enumerate(zip(kl, act, strict=True)):
        writer.writerow([dim, f"{k:.6g}", f"{a:.6g}", int(is_active(a))])
    return out.getvalue()


def read_latent_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(KL per dimension, activity per dimension) from a `latent_table` CSV."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        kl = np.array([float(r["kl"]) for r in rows])
        act = np.array([float(r["activity"]) for r in rows])
    except FileNotFoundError:
        raise DataFileError(path, "missing", _REEVALUATE) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFileError(path, f"unreadable ({exc})", _REEVALUATE) from None
    if not len(kl):
        raise DataFileError(path, "has no rows", _REEVALUATE)
    return kl, act
