"""Posterior-collapse diagnostics and the usefulness of the latent space."""

from __future__ import annotations

import numpy as np

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016


def activity(z_mean: np.ndarray) -> np.ndarray:
    """Cov_x(E_q[z_u | x]) for every latent unit u: the variance of the posterior means."""
    return np.var(z_mean.astype(np.float64), axis=0)


def active_units(z_mean: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> int:
    return int(np.sum(activity(z_mean) > threshold))


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
