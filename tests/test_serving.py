"""The served VAE: its pyfunc contract in process, and `vaelab serve` (`mlflow models serve`)
answering over HTTP on 127.0.0.1, refusing bad requests with a 400 and serving on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from tests.conftest import free_port
from vaelab.core.errors import VaelabError
from vaelab.core.mnist import PIXELS
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import model_data
from vaelab.evaluation.likelihood import estimate
from vaelab.model.io import load_vae
from vaelab.serving.client import Refused, served
from vaelab.serving.service import MAX_DECODES
from vaelab.tracking.registry import promote
from vaelab.training.loop import train

CHAMPION = "models:/vaelab@champion"
BAD_REQUESTS = {  # what is wrong: (rows, params, words the answer must hold)
    "28x28 images not flattened": (np.zeros((2, 28, 28)), {}, "shape"),
    "a wrong row width": (np.zeros((2, 100)), {}, "rows of 784 values"),
    "pixels outside [0, 1]": (np.full((2, PIXELS), 255.0), {}, "[0, 1]"),
    "an unknown output": (np.zeros((1, PIXELS)), {"output": "denoise"}, "not one of"),
    "a k that would exhaust the budget": (
        np.zeros((2_000, PIXELS)),
        {"output": "score", "k": 10_000},
        f"{MAX_DECODES:,}",
    ),
    "a k of zero": (np.zeros((1, PIXELS)), {"output": "score", "k": 0}, "k=0"),
    "too many samples": (np.zeros((1, 1)), {"output": "sample", "n": 10**6}, "n=1000000"),
    "latents of the wrong size": (np.zeros((1, 7)), {"output": "decode"}, "rows of 4 values"),
}


@pytest.fixture
def champion(tiny_workdir):
    """A tiny VAE trained by the train stage, given a test NLL and registered as the
    champion; (params, its test images as binarized rows)."""
    params = tiny_workdir()
    train(params)
    paths = Artifacts.of(params)
    run_id = json.loads(paths.train_run.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    mlflow.MlflowClient().log_metric(run_id, "test_nll", 500.0)
    assert "is now version 1" in promote("vaelab", run_id=run_id)
    x, _ = model_data(paths, "test", binary=True)
    return params, x.reshape(len(x), PIXELS)


def _library_scores(params, rows: np.ndarray, k: int):
    """The evaluate stage's estimate for ``rows``, with its seed and batching."""
    cfg = params.evaluate
    vae = load_vae(Artifacts.of(params).model)
    return estimate(vae, rows.reshape(-1, 28, 28, 1), k, cfg.batch_size, cfg.chunk,
                    seed=params.base.seed, progress=False)  # fmt: skip


def test_every_output_in_process(champion):
    params, rows = champion
    model = mlflow.pyfunc.load_model(CHAMPION)
    vae = load_vae(Artifacts.of(params).model)
    x = rows[:7]

    recon = model.predict(x)  # reconstruct is the default
    assert recon.shape == (7, PIXELS) and recon.min() >= 0 and recon.max() <= 1
    expected = vae.predict(x.reshape(-1, 28, 28, 1), verbose=0).reshape(7, PIXELS)
    np.testing.assert_allclose(recon, expected, atol=1e-6)

    code = model.predict(x, params={"output": "encode"})
    assert code["mean"].shape == code["log_var"].shape == (7, 4)
    decoded = model.predict(code["mean"], params={"output": "decode"})
    np.testing.assert_allclose(decoded, recon, atol=1e-6)  # decode(E[z|x]) is reconstruct

    first, again, other = (
        model.predict(x[:1], params={"output": "sample", "n": 5, "seed": s}) for s in (7, 7, 8)
    )
    assert first.shape == (5, PIXELS) and first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.01

    scores = model.predict(x, params={"output": "score", "k": 20})
    library = _library_scores(params, x, 20)
    np.testing.assert_allclose(scores["nll"], library.nll, rtol=1e-6)
    np.testing.assert_allclose(scores["neg_elbo"], library.reconstruction + library.kl, rtol=1e-6)
    assert (scores["nll"] <= scores["neg_elbo"] + 1e-3).all()  # the bound is tighter

    spec = model.metadata.signature.params
    defaults = {p.name: p.default for p in spec.params}
    assert defaults["k"] == params.evaluate.importance_samples
    assert defaults["seed"] == params.base.seed and defaults["output"] == "reconstruct"


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_is_refused_with_what_is_wrong(champion, case):
    model = mlflow.pyfunc.load_model(CHAMPION)
    rows, params, words = BAD_REQUESTS[case]
    with pytest.raises(MlflowException) as refused:
        model.predict(rows.astype(np.float32), params=params)
    assert words in refused.value.message


def test_vaelab_serve_answers_each_output_and_serves_on_after_bad_requests(champion, tmp_path):
    params, rows = champion
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    with log.open("w") as out:
        try:
            with served(CHAMPION, free_port(), out, env) as client:
                x = rows[:5]
                recon = np.array(client.predict(x, output="reconstruct"))
                assert recon.shape == (5, PIXELS) and recon.min() >= 0 and recon.max() <= 1
                mean = np.array(client.predict(x, output="encode")["mean"])
                assert mean.shape == (5, 4)
                np.testing.assert_allclose(client.predict(mean, output="decode"), recon, atol=1e-5)
                samples, again, other = (
                    np.array(client.predict([[0]], output="sample", n=3, **seed))
                    for seed in ({}, {"seed": 3}, {"seed": 4})
                )
                assert samples.shape == (3, PIXELS)
                np.testing.assert_array_equal(samples, again)  # seed 3 is the default (base.seed)
                assert np.abs(samples - other).max() > 0.01
                scores = [row["nll"] for row in client.predict(x, output="score", k=30)]
                np.testing.assert_allclose(scores, _library_scores(params, x, 30).nll, rtol=1e-5)

                for case, (bad, extra, words) in BAD_REQUESTS.items():
                    with pytest.raises(Refused) as refused:
                        client.predict(bad, **extra)
                    assert 400 <= refused.value.status < 500, case
                    assert words in refused.value.message, (case, refused.value.message[:500])
                    assert len(client.predict(x[:1])) == 1, f"not serving after {case}"
        except VaelabError as exc:  # a failed start, or an answer it should not have refused
            raise AssertionError(f"{exc}:\n{log.read_text()}") from None


def test_serve_without_a_champion_says_how_to_get_one(tiny_workdir, monkeypatch):
    tiny_workdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    done = subprocess.run(
        [Path(sys.executable).with_name("vaelab"), "serve", "--model", CHAMPION],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]  # after MLflow's lines creating the store
    assert error.startswith(f"error: cannot serve {CHAMPION}") and "vaelab register" in error
