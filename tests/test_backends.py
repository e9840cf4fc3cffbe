"""One model on every backend: a model saved on one loads on the other in safe mode and gets
the same test likelihood there; the same seed trains the same on JAX (on TensorFlow, the test
process's backend: test_train.py); the backend comes from the params, not the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_TRAIN, committed_params
from vaelab.core.backend import use_backend
from vaelab.core.errors import VaelabError
from vaelab.core.paths import Artifacts
from vaelab.training.history import read_history
from vaelab.training.loop import train

BACKENDS = ("tensorflow", "jax")
PROBE = """
import json, sys
import numpy as np
from vaelab.core.backend import use_backend
use_backend(sys.argv[1])
import keras
from vaelab.evaluation.likelihood import estimate
from vaelab.model.io import load_vae
x = (np.random.default_rng(0).random((30, 28, 28, 1)) < 0.3).astype(np.float32)
vae = load_vae(sys.argv[2])
est = estimate(vae, x, 50, batch_size=10, chunk=7, seed=3, progress=False)
print(json.dumps({"backend": keras.backend.backend(), "nll": est.nll.tolist()}))
"""

TRAIN = """
import json, sys
from vaelab.core.params import load_params
from vaelab.training.loop import train
train(load_params(sys.argv[1]))
import keras
print(json.dumps({"backend": keras.backend.backend()}))
"""


@pytest.fixture(scope="module", params=["standard", "mixture"])
def saved_model(tmp_path_factory, request) -> Path:
    """A model with either prior (the mixture's weights are part of the file)."""
    from vaelab.model.vae import build_vae

    train = {**TINY_TRAIN, "prior": {"kind": request.param}, "kl": {"free_bits": 0.0}}
    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_vae(committed_params().replace({"train": train}).train, 0, binarize=True).save(path)
    return path


def _nll_on(backend: str, model: Path) -> list[float]:
    env = {**os.environ, "KERAS_BACKEND": "torch"}  # the environment must not win
    done = subprocess.run([sys.executable, "-c", PROBE, backend, str(model)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["backend"] == backend
    return answer["nll"]


def test_a_saved_model_scores_the_same_on_every_backend(saved_model):
    tf_nll, jax_nll = (_nll_on(backend, saved_model) for backend in BACKENDS)
    assert len(tf_nll) == 30
    assert max(abs(a - b) for a, b in zip(tf_nll, jax_nll, strict=True)) < 1e-3


def test_a_process_cannot_switch_backend_once_keras_is_loaded():
    import keras

    other = next(b for b in BACKENDS if b != keras.backend.backend())
    with pytest.raises(VaelabError, match="start a new process"):
        use_backend(other)


def test_training_refuses_params_of_another_backend_than_its_process(tiny_workdir):
    import keras

    other = next(b for b in BACKENDS if b != keras.backend.backend())
    with pytest.raises(VaelabError, match=f"backend {other!r} could be set"):
        train(tiny_workdir(backend=other))


def test_the_same_seed_trains_the_same_on_jax(tiny_workdir, tmp_path):
    """With a learned prior and a warm-up: their variables are part of JAX's explicit state."""
    kl = {"free_bits": 0.0, "schedule": "linear", "warmup": 1}
    params = tiny_workdir(backend="jax", prior={"kind": "mixture", "components": 4}, kl=kl)
    file = tmp_path / "jax.yaml"
    file.write_text(yaml.safe_dump(params.model_dump()))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}  # the params must win
    histories = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", TRAIN, str(file)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"backend": "jax"}
        rows = read_history(Artifacts.of(params).train_history)
        histories.append([{k: v for k, v in r.items() if k != "epoch_time"} for r in rows])
    first, again = histories
    assert len(first) == len(again) == 2
    for a, b in zip(first, again, strict=True):
        assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-6)
