"""The VAE's prior p(z): N(0, I) (no layer), or a learned mixture of diagonal Gaussians.

A learned prior can follow the aggregate posterior where N(0, I) leaves holes and pays for
them in KL (Tomczak & Welling 2018, "VAE with a VampPrior", compare it with theirs). Under a
mixture the KL term has no closed form: training and evaluation use its one-sample estimate
log q(z|x) - log p(z).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

_LOG_2PI = math.log(2 * math.pi)


def normal_log_density(z, mean, log_var):
    """log N(z; mean, exp(log_var)) elementwise (per latent dimension)."""
    return -0.5 * (ops.square(z - mean) * ops.exp(-log_var) + log_var + _LOG_2PI)


def standard_normal_log_prob(z):
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * ops.sum(ops.square(z) + _LOG_2PI, axis=-1)


@keras.saving.register_keras_serializable(package="vaelab")
class MixturePrior(layers.Layer):
    """p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)), every parameter learned with the VAE.

    The means start as draws from N(0, I), the variances at 1 and the weights equal, so at
    initialisation the prior is close to N(0, I). ``call(z)`` is ``log_prob(z)``.
    """

    def __init__(self, components: int, latent_dim: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.components, self.latent_dim, self.seed = components, latent_dim, seed
        shape = (components, latent_dim)
        init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
        self.means = self.add_weight(shape=shape, initializer=init, name="means")
        self.log_vars = self.add_weight(shape=shape, initializer="zeros", name="log_vars")
        self.logits = self.add_weight(shape=(components,), initializer="zeros", name="logits")
        self.built = True

    def _component_log_probs(self, z):
        """log N(z; mu_k, diag(sigma_k^2)) of every component k, [..., K]: expanded into matrix
        products, so no [..., K, latent_dim] tensor is made (the evaluation scores 10^7 z)."""
        precision = ops.exp(-self.log_vars)
        flat = ops.reshape(z, (-1, self.latent_dim))
        quadratic = (
            ops.matmul(ops.square(flat), ops.transpose(precision))
            - 2.0 * ops.matmul(flat, ops.transpose(self.means * precision))
            + ops.sum(ops.square(self.means) * precision, axis=-1)
        )
        log_probs = -0.5 * (
            quadratic + ops.sum(self.log_vars, axis=-1) + self.latent_dim * _LOG_2PI
        )
        return ops.reshape(log_probs, (*ops.shape(z)[:-1], self.components))

    def log_prob(self, z):
        """log p(z) for z [..., latent_dim]."""
        return ops.logsumexp(self._component_log_probs(z) + ops.log_softmax(self.logits), axis=-1)

    def marginal_log_probs(self, z):
        """log p(z_d) per latent dimension, under the prior's marginal in that dimension."""
        per_dim = normal_log_density(z[..., None, :], self.means, self.log_vars)
        return ops.logsumexp(per_dim + ops.log_softmax(self.logits)[:, None], axis=-2)

    def call(self, z):
        return self.log_prob(z)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` seeded draws z ~ p(z), [n, latent_dim]."""
        rng = np.random.default_rng(seed)
        logits = ops.convert_to_numpy(self.logits).astype(np.float64)
        weights = np.exp(logits - logits.max())
        picked = rng.choice(self.components, size=n, p=weights / weights.sum())
        means = ops.convert_to_numpy(self.means)[picked]
        std = np.exp(0.5 * ops.convert_to_numpy(self.log_vars))[picked]
        return (means + std * rng.standard_normal((n, self.latent_dim))).astype(np.float32)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "components": self.components,
            "latent_dim": self.latent_dim,
            "seed": self.seed,
        }
