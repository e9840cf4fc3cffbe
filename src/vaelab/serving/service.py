"""What the served VAE answers: one pyfunc model, its ``output`` parameter picks the answer.

Input: a float32 tensor of rows, one per image (784 pixel values in [0, 1], a 28x28 image
flattened row by row) or, for ``decode``, one per latent vector. Parameters:

- ``output``: ``reconstruct`` (E[x|z_mean], rows of 784 in [0, 1]), ``encode`` ({"mean",
  "log_var"} of q(z|x)), ``decode`` (E[x|z] of each latent row), ``sample`` (``n`` images
  decoded from z ~ p(z), the model's prior, drawn with ``seed``; the input rows are ignored),
  ``score`` (per image: ``nll``, the importance-sampled -log p(x) with ``k`` samples, and
  ``neg_elbo`` = ``reconstruction`` + ``kl``, in nats: the evaluate stage's numbers for the
  same images, k, seed and batching);
- ``k``, ``seed``: default to the evaluate stage's settings, recorded in the model config;
- ``n``: how many images ``sample`` draws.

A request the model cannot answer (a wrong width, values outside [0, 1], an unknown output,
a budget exceeded) is refused with an MlflowException, which the scoring server answers 400.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from vaelab.core.mnist import IMAGE_SHAPE, PIXELS

OUTPUTS = ("reconstruct", "encode", "decode", "sample", "score")  # the first is the default
SAMPLES = 16  # default n of `sample`
MAX_ROWS = 10_000  # images or latent vectors per request
MAX_K = 10_000  # importance samples per image (the literature's k = 5000 fits)
MAX_DECODES = 10_000_000  # rows x k of one `score` request: the whole test set at k = 1000


def refuse(message: str) -> MlflowException:
    """The error a bad request gets: HTTP 400 from the scoring server, ``message`` in it."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def check_rows(x: Any, width: int, what: str, unit_range: bool) -> np.ndarray:
    """``x`` as float32 rows of ``width`` finite values (in [0, 1] if ``unit_range``)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != width:
        raise refuse(
            f"input of shape {x.shape}: send rows of {width} values, one per {what}"
            + (" (a 28x28 image flattened row by row)" if width == PIXELS else "")
        )
    if not 1 <= len(x) <= MAX_ROWS:
        raise refuse(f"{len(x)} rows: send 1 to {MAX_ROWS:,} per request")
    if not np.isfinite(x).all():
        raise refuse("the input holds NaN or infinite values")
    if unit_range and (x.min() < 0 or x.max() > 1):
        raise refuse(
            f"pixel values from {x.min():g} to {x.max():g}: images are intensities in [0, 1] "
            "(divide 8-bit pixels by 255)"
        )
    return x


def check_whole(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or the refusal naming the parameter."""
    whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not whole or not low <= value <= high:
        raise refuse(f"{name}={value!r}: use a whole number from {low} to {high:,}")
    return int(value)


class VAEService(mlflow.pyfunc.PythonModel):
    """The trained VAE (artifact ``vae``, a .keras file loaded in safe mode) as a pyfunc."""

    def load_context(self, context) -> None:
        from vaelab.evaluation.likelihood import Estimator
        from vaelab.model.io import load_vae

        self.vae = load_vae(context.artifacts["vae"])
        self.config = dict(context.model_config)  # seed, k, batch_size, chunk
        self.estimator = lru_cache(maxsize=4)(
            lambda k: Estimator(self.vae, k, self.config["chunk"])
        )

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None):
        from vaelab.model import io

        params = {"output": OUTPUTS[0], **(params or {})}
        output = params["output"]
        if output not in OUTPUTS:
            raise refuse(f"output={output!r} is not one of {', '.join(OUTPUTS)}")
        seed = check_whole("seed", params.get("seed", self.config["seed"]), 0, 2**31 - 1)
        if output == "sample":
            n = check_whole("n", params.get("n", SAMPLES), 1, MAX_ROWS)
            return io.sample_prior(self.vae, n, seed).reshape(n, PIXELS)
        if output == "decode":
            z = check_rows(model_input, io.latent_dim(self.vae), "latent vector", False)
            return io.decode_means(self.vae, z).reshape(len(z), PIXELS)
        x = check_rows(model_input, PIXELS, "image", True).reshape(-1, *IMAGE_SHAPE)
        if output == "reconstruct":
            return io.reconstruct(self.vae, x).reshape(-1, PIXELS)
        if output == "encode":
            mean, log_var = io.encode(self.vae, x)
            return {"mean": mean, "log_var": log_var}
        k = check_whole("k", params.get("k", self.config["k"]), 1, MAX_K)
        if len(x) * k > MAX_DECODES:
            raise refuse(
                f"{len(x)} images at k={k} is {len(x) * k:,} decoder passes, over the "
                f"{MAX_DECODES:,} one request may ask for: send fewer images or a smaller k"
            )
        est = self.estimator(k)(x, self.config["batch_size"], seed)
        return pd.DataFrame(
            {
                "nll": est.nll,
                "neg_elbo": est.reconstruction + est.kl,
                "reconstruction": est.reconstruction,
                "kl": est.kl,
            }
        )
