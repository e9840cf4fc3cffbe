"""Fréchet distance between two sets of features (FID's formula; the features here come from
the MNIST classifier of `vaelab.classifier`, as Inception's do for FID)."""

from __future__ import annotations

import numpy as np


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets [N, F].

    Tr (C_a C_b)^(1/2) is computed as Tr (S C_b S)^(1/2) with S = C_a^(1/2), a symmetric
    PSD matrix, so singular covariances (dead ReLU features) need no regularisation.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0, None)).sum()
    mean_term = np.sum((a.mean(0) - b.mean(0)) ** 2)
    return float(max(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * cross, 0.0))
