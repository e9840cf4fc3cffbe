"""A saved VAE: loading it (safe mode), encoding, decoding and sampling."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import ops

from vaelab.core.errors import DataFileError
from vaelab.model.vae import VAE  # registers the VAE classes for deserialization

RETRAIN = "Restore it with `dvc checkout` or re-run `dvc repro train`"


def load_keras(path: str | Path, fix: str = RETRAIN) -> keras.Model:
    """A ``.keras`` file in safe mode (no arbitrary code), or an error naming file and fix."""
    path = Path(path)
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except FileNotFoundError:
        raise DataFileError(path, "missing", fix) from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(path, f"not a loadable Keras model ({exc})", fix) from None


def load_vae(path: str | Path) -> VAE:
    """The trained VAE saved by the train stage."""
    vae = load_keras(path)
    if not isinstance(vae, VAE):
        raise DataFileError(path, f"holds a {type(vae).__name__}, not a VAE", RETRAIN)
    return vae


def latent_dim(vae: VAE) -> int:
    return int(vae.encoder.outputs[0].shape[-1])


def in_batches(model: keras.Model, x: np.ndarray, batch_size: int):
    """``model`` on ``x``, ``batch_size`` rows per call: what `predict` computes, without its
    set-up of tens of milliseconds per call (a served request of one image pays no more)."""
    parts = [model.predict_on_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], list | tuple):
        return tuple(np.concatenate(outputs) for outputs in zip(*parts, strict=True))
    return np.concatenate(parts)


def reconstruct(vae: VAE, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """E[x|z = mean of q(z|x)] (pixel probabilities) for every image."""
    return in_batches(vae, x, batch_size)


def encode(vae: VAE, x: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The posterior q(z|x) of every image: (mean, log-variance)."""
    z_mean, z_log_var = in_batches(vae.encoder, x, batch_size)
    return z_mean, z_log_var


def encode_means(vae: VAE, x: np.ndarray, batch_size: int) -> np.ndarray:
    """E_q[z|x] for every image."""
    return encode(vae, x, batch_size)[0]


def decode_means(vae: VAE, z: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """E[x|z] (pixel probabilities) for every latent vector."""
    logits = in_batches(vae.decoder, z.astype(np.float32), batch_size)
    return ops.convert_to_numpy(ops.sigmoid(logits))


def prior_name(vae: VAE) -> str:
    """The model's prior, in words for a figure's title."""
    return (
        "N(0, I)" if vae.prior is None else f"a learned mixture of {vae.prior.components} Gaussians"
    )


def sample_prior(vae: VAE, n: int, seed: int, batch_size: int = 500) -> np.ndarray:
    """Decoder means E[x|z] for ``n`` seeded draws z ~ p(z), the model's prior."""
    if vae.prior is None:
        z = np.random.default_rng(seed).standard_normal((n, latent_dim(vae)))
    else:
        z = vae.prior.sample(n, seed)
    return decode_means(vae, z, batch_size)
