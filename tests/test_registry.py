"""The Model Registry: the best run's served VAE becomes `<experiment>@champion`, loadable
with pyfunc; a better sweep moves the alias, a worse one does not."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import TINY_TRAIN, committed_params
from vaelab.core.errors import VaelabError
from vaelab.core.mnist import PIXELS
from vaelab.tracking.registry import ALIAS, promote


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.create_experiment("vaelab", (tmp_path / "art").as_uri())


def _finished_run(experiment: str, sweep: str, nll: float, seed: int) -> str:
    """A finished run whose served model is a tiny VAE initialized with ``seed``."""
    from vaelab.model.vae import build_vae
    from vaelab.serving.log import served_model
    from vaelab.tracking.outbox import Delivery, send

    train = committed_params().replace({"train": TINY_TRAIN}).train
    path = Path(f"vae-{seed}.keras")
    build_vae(train, seed).save(path)
    with mlflow.start_run(experiment_id=experiment, tags={"sweep": sweep}) as run:
        mlflow.log_metrics({"test_nll": nll, "test_neg_elbo": nll + 5, "test_kl": 25.0})
        mlflow.set_tags({"importance_samples": "1000", "test_images": "10000"})
    served = served_model(path, {"seed": 0, "k": 10, "batch_size": 100, "chunk": 10})
    send(Delivery(run.info.run_id, model=str(path), served=served), set())
    return run.info.run_id


def _champion_seed() -> int:
    """Which of the logged VAEs the champion is: the one whose reconstruction it returns."""
    from vaelab.model.io import load_vae

    image = np.full((1, PIXELS), 0.5, np.float32)
    served = mlflow.pyfunc.load_model(f"models:/vaelab@{ALIAS}").predict(image)
    for path in Path.cwd().glob("vae-*.keras"):
        if np.allclose(load_vae(path).predict(image.reshape(1, 28, 28, 1), verbose=0).ravel(),
                       served.ravel(), atol=1e-6):  # fmt: skip
            return int(path.stem.removeprefix("vae-"))
    raise AssertionError("the champion is none of the logged models")


def test_champion_follows_the_best_sweep_only(store):
    _finished_run(store, "first", nll=90.0, seed=1)
    _finished_run(store, "first", nll=88.0, seed=2)
    with mlflow.start_run(experiment_id=store, tags={"sweep": "first"}):
        mlflow.log_metric("test_nll", 80.0)  # better, but FAILED: never chosen
        mlflow.end_run("FAILED")
    assert "is now version 1" in promote("vaelab", sweep="first")
    assert _champion_seed() == 2
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("vaelab", ALIAS)
    assert version.tags["sweep"] == "first" and version.tags["chosen_by"] == "lowest test_nll"
    assert "test NLL 88.00 nats" in version.description and "k=1000" in version.description

    _finished_run(store, "better", nll=86.5, seed=3)
    assert "is now version 2" in promote("vaelab", sweep="better")
    assert _champion_seed() == 3

    _finished_run(store, "worse", nll=95.0, seed=4)
    assert "stays" in promote("vaelab", sweep="worse")
    assert str(client.get_model_version_by_alias("vaelab", ALIAS).version) == "2"
    assert len(client.search_model_versions("name = 'vaelab'")) == 3


def test_a_sweep_without_evaluated_runs_is_an_error(store):
    with pytest.raises(VaelabError, match="no finished run with test_nll"):
        promote("vaelab", sweep="nothing")
