"""A saved VAE: loading it (safe mode), encoding, decoding, sampling, and its serving form."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from vaelab.core.errors import DataFileError
from vaelab.core.mnist import IMAGE_SHAPE
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


def encode_means(vae: VAE, x: np.ndarray, batch_size: int) -> np.ndarray:
    """E_q[z|x] for every image."""
    return vae.encoder.predict(x, batch_size=batch_size, verbose=0)[0]


def decode_means(vae: VAE, z: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """E[x|z] (pixel probabilities) for every latent vector."""
    logits = vae.decoder.predict(z.astype(np.float32), batch_size=batch_size, verbose=0)
    return ops.convert_to_numpy(ops.sigmoid(logits))


def sample_prior(vae: VAE, n: int, seed: int, batch_size: int = 500) -> np.ndarray:
    """Decoder means E[x|z] for ``n`` seeded draws z ~ N(0, I)."""
    z = np.random.default_rng(seed).standard_normal((n, latent_dim(vae)))
    return decode_means(vae, z, batch_size)


def reconstruction_model(vae: VAE) -> keras.Model:
    """A functional image -> E[x|z_mean] model of built-in layers only, for serving (MLflow)."""
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    z_mean, _ = vae.encoder(inputs)
    outputs = layers.Activation("sigmoid", name="reconstruction")(vae.decoder(z_mean))
    return keras.Model(inputs, outputs, name="vae_reconstruction")
