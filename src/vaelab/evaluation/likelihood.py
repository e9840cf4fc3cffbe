"""Test log-likelihood by importance sampling (Burda et al. 2016, the IWAE bound).

log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k,  z_i ~ q(z|x).
The bound is a lower bound on log p(x) for every k and tightens as k grows. Samples are
drawn in chunks and combined with a running logsumexp, so memory is bounded by
batch x chunk x 784 whatever k is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from vaelab.core.mnist import PIXELS
from vaelab.model.losses import reconstruction_nll

_LOG_2PI = math.log(2 * math.pi)  # of log q(z|x), from the standard-normal draws


@dataclass(frozen=True)
class Estimates:
    """Per-example estimates, nats."""

    nll: np.ndarray  # -log p(x), importance-sampled with k samples
    reconstruction: np.ndarray  # E_q[-log p(x|z)], Monte Carlo over the same k samples
    kl: np.ndarray  # KL(q(z|x) || p(z)): closed form for N(0, I), else over the k samples
    kl_per_dim: np.ndarray  # [N, latent_dim], see `VAE.kl_parts`
    z_mean: np.ndarray  # [N, latent_dim]


def _batch_estimates(vae, x, eps, k: int, chunk: int):
    """The bound's parts for one batch, from the k standard-normal draws ``eps`` [k, batch,
    latent]: ``chunk`` samples per decoder call in a compiled loop (one decoder in the graph for
    the full chunks, one more for a remainder)."""
    z_mean, z_log_var = vae.encoder(x, training=False)
    batch, dim = ops.shape(z_mean)[0], ops.shape(z_mean)[1]
    std = ops.exp(0.5 * z_log_var)

    def add(noise, c: int, sums):
        log_sum, recon_sum, kl_sum = sums
        z = z_mean[None] + std[None] * noise
        logits = vae.decoder(ops.reshape(z, (c * batch, dim)), training=False)
        targets = ops.reshape(ops.tile(x[None], (c, 1, 1, 1, 1)), (c * batch, *x.shape[1:]))
        log_px_z = -ops.reshape(
            reconstruction_nll(targets, logits, vae.likelihood, vae.sigma), (c, batch)
        )
        log_pz = vae.log_prior(z)
        log_qz = -0.5 * ops.sum(ops.square(noise) + _LOG_2PI + z_log_var[None], axis=-1)
        log_sum = ops.logaddexp(log_sum, ops.logsumexp(log_px_z + log_pz - log_qz, axis=0))
        kl_sum = kl_sum + ops.sum(log_qz - log_pz, axis=0)
        return log_sum, recon_sum - ops.sum(log_px_z, axis=0), kl_sum

    def full_chunk(i, sums):
        return add(ops.slice(eps, (i * chunk, 0, 0), (chunk, batch, dim)), chunk, sums)

    full, rest = divmod(k, chunk)
    sums = (ops.full((batch,), -np.inf), ops.zeros((batch,)), ops.zeros((batch,)))
    if full:
        sums = ops.fori_loop(0, full, full_chunk, sums)
    if rest:
        sums = add(eps[full * chunk :], rest, sums)
    log_sum, recon_sum, kl_sum = sums
    if vae.prior is None:  # closed form
        kl, kl_dims = vae.kl_parts(z_mean, z_log_var, None)
    else:  # the k samples' mean; per dimension (a diagnostic) from the first chunk's
        first = eps[: min(k, chunk)]
        _, kl_dims = vae.kl_parts(z_mean[None], z_log_var[None], z_mean[None] + std[None] * first)
        kl, kl_dims = kl_sum / k, ops.mean(kl_dims, axis=0)
    return math.log(k) - log_sum, recon_sum / k, kl, kl_dims, z_mean


def compiled(fn):
    """``fn`` compiled by the Keras backend: a tf.function on TensorFlow, jax.jit on JAX."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, reduce_retracing=True)


def noise(k: int, batch: int, dim: int, seed: int, index: int) -> np.ndarray:
    """The standard-normal draws of batch ``index``: the same numbers on every backend."""
    return np.random.default_rng([seed, index]).standard_normal((k, batch, dim), np.float32)


class Estimator:
    """The IWAE estimate of one model at one ``k``: compiled once, reused for every call."""

    def __init__(self, vae, k: int, chunk: int = 100) -> None:
        self.k, self.dim = k, int(vae.encoder.outputs[0].shape[-1])
        self._step = compiled(lambda xb, eps: _batch_estimates(vae, xb, eps, k, chunk))

    def __call__(
        self, x: np.ndarray, batch_size: int = 100, seed: int = 0, progress: bool = False
    ) -> Estimates:
        """Per-image estimates for ``x``: batch ``i`` draws its samples from seed (seed, i)."""
        from tqdm import tqdm

        parts: list[tuple] = []
        starts = range(0, len(x), batch_size)
        for index, start in enumerate(tqdm(starts, desc=f"NLL (k={self.k})", disable=not progress)):
            xb = x[start : start + batch_size]
            eps = noise(self.k, len(xb), self.dim, seed, index)
            parts.append(tuple(ops.convert_to_numpy(t) for t in self._step(xb, eps)))
        nll, recon, kl, kl_dims, z_mean = (np.concatenate(p) for p in zip(*parts, strict=True))
        return Estimates(nll=nll, reconstruction=recon, kl=kl, kl_per_dim=kl_dims, z_mean=z_mean)


def estimate(
    vae,
    x: np.ndarray,
    k: int,
    batch_size: int = 100,
    chunk: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> Estimates:
    """Importance-sampled NLL and ELBO parts for every image in ``x`` (seeded, batched)."""
    return Estimator(vae, k, chunk)(x, batch_size, seed, progress)


def bits_per_dim(nats: float, dims: int = PIXELS) -> float:
    return nats / (dims * math.log(2))
