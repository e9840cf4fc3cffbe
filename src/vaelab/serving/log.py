"""Logging the served VAE into a run: the pyfunc from code, its .keras file, its contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vaelab.core.mnist import PIXELS
from vaelab.core.params import Params
from vaelab.serving.service import OUTPUTS, SAMPLES

CODE = Path(__file__).with_name("model_code.py")
NAME = "model"  # the logged model's name in its run, which the registry registers


def scoring_config(params: Params) -> dict[str, int]:
    """The defaults of ``score``: the evaluate stage's seed, k and batching."""
    cfg = params.evaluate
    return {"seed": params.base.seed, "k": cfg.importance_samples,
            "batch_size": cfg.batch_size, "chunk": cfg.chunk}  # fmt: skip


def signature(config: dict):
    """Rows in, and the parameters with their defaults: what the UI and `predict` show."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
        params=ParamSchema(
            [
                ParamSpec("output", "string", OUTPUTS[0]),
                ParamSpec("k", "long", config["k"]),
                ParamSpec("n", "long", SAMPLES),
                ParamSpec("seed", "long", config["seed"]),
            ]
        ),
    )


def requirements() -> list[str]:
    """The packages the model runs on, pinned to this environment's (vaelab itself aside:
    install the repository at the run's commit)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("keras", "tensorflow", "numpy", "pandas")]


def example(path: str | Path) -> np.ndarray:
    """Two digits the model itself draws, as two request rows (3 decimals: a readable file)."""
    from vaelab.model.io import load_vae, sample_prior

    return np.round(sample_prior(load_vae(path), 2, seed=0).reshape(2, PIXELS), 3)


def served_model(path: str | Path, config: dict) -> dict[str, Any]:
    """How to log the VAE in ``path`` as the pyfunc model ``model`` (JSON, for the outbox):
    `mlflow.pyfunc.log_model`'s arguments but the model file, the signature as a dict, the
    input example as (rows, params). ``config`` (seed, k, batch_size, chunk) is the evaluate
    stage's, the defaults of ``score``."""
    return {
        "name": NAME,
        "python_model": str(CODE),
        "model_config": config,
        "signature": signature(config).to_dict(),
        "input_example": (example(path).tolist(), {"output": "score", "k": 100}),
        "pip_requirements": requirements(),
    }
