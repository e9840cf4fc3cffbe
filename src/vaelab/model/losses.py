"""The VAE objective, written once with keras.ops; training, validation and evaluation share it.

All quantities are in nats per image: the reconstruction term is -log p(x|z) summed over the
784 pixels, KL is KL(q(z|x) || p(z)) (see `vaelab.model.prior`).
"""

from __future__ import annotations

import math

from keras import ops

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def reconstruction_nll(target, logits, likelihood: str = "bernoulli", sigma: float = 1.0):
    """-log p(x|z) per example, summed over pixels; ``logits`` are the decoder's raw outputs.

    bernoulli: binary cross-entropy with logits (exact for binary targets).
    gaussian: N(x; sigmoid(logits), sigma^2) per pixel, sigma fixed.
    """
    batch = ops.shape(target)[0]
    target = ops.reshape(target, (batch, -1))
    logits = ops.reshape(logits, (batch, -1))
    if likelihood == "bernoulli":
        per_pixel = ops.softplus(logits) - target * logits
    elif likelihood == "gaussian":
        z = (target - ops.sigmoid(logits)) / sigma
        per_pixel = 0.5 * ops.square(z) + math.log(sigma) + _HALF_LOG_2PI
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    return ops.sum(per_pixel, axis=-1)


def kl_per_dim(z_mean, z_log_var):
    """KL(N(mean, exp(log_var)) || N(0, 1)) per example and latent dimension."""
    return 0.5 * (ops.exp(z_log_var) + ops.square(z_mean) - 1.0 - z_log_var)


def vae_loss(
    target,
    logits,
    kl,
    kl_dims,
    beta=1.0,
    likelihood: str = "bernoulli",
    sigma: float = 1.0,
    free_bits: float = 0.0,
    target_beta: float = 1.0,
) -> dict:
    """Batch means of the loss parts, from the per-example ``kl`` and its split ``kl_dims``
    over latent dimensions.

    ``loss`` = reconstruction + beta * KL, where with free bits each latent dimension's
    batch-mean KL is floored at ``free_bits`` nats (Kingma et al. 2016). ``objective`` is the
    same with the schedule's target beta: what the run optimizes once any warm-up is over, so
    it is comparable across epochs. ``kl`` and ``neg_elbo`` (= reconstruction + KL, beta = 1)
    are always the unfloored values.
    """
    recon = reconstruction_nll(target, logits, likelihood, sigma)
    if free_bits > 0:
        kl_term = ops.sum(ops.maximum(ops.mean(kl_dims, axis=0), free_bits))
    else:
        kl_term = ops.mean(kl)
    recon_mean = ops.mean(recon)
    return {
        "loss": recon_mean + beta * kl_term,
        "objective": recon_mean + target_beta * kl_term,
        "reconstruction": recon_mean,
        "kl": ops.mean(kl),
        "neg_elbo": recon_mean + ops.mean(kl),
    }
