"""The Model Registry: the best run's model becomes `<experiment>@champion`, loadable with
pyfunc; a better sweep moves the alias, a worse one does not."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from vaelab.core.errors import VaelabError
from vaelab.tracking.registry import ALIAS, promote


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.create_experiment("vaelab", (tmp_path / "art").as_uri())


def _finished_run(experiment: str, sweep: str, nll: float, scale: float) -> str:
    """A finished run with a serving model whose output is ``scale`` * its input."""
    import keras

    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Rescaling(scale)(inputs))
    with mlflow.start_run(experiment_id=experiment, tags={"sweep": sweep}) as run:
        mlflow.log_metrics({"test_nll": nll, "test_neg_elbo": nll + 5, "test_kl": 25.0})
        mlflow.set_tags({"importance_samples": "1000", "test_images": "10000"})
        mlflow.keras.log_model(model, name="model")
    return run.info.run_id


def _champion_output() -> float:
    served = mlflow.pyfunc.load_model(f"models:/vaelab@{ALIAS}")
    return float(np.asarray(served.predict(np.ones((1, 28, 28, 1), np.float32))).max())


def test_champion_follows_the_best_sweep_only(store):
    _finished_run(store, "first", nll=90.0, scale=1.0)
    _finished_run(store, "first", nll=88.0, scale=2.0)
    with mlflow.start_run(experiment_id=store, tags={"sweep": "first"}):
        mlflow.log_metric("test_nll", 80.0)  # better, but FAILED: never chosen
        mlflow.end_run("FAILED")
    assert "is now version 1" in promote("vaelab", sweep="first")
    assert _champion_output() == pytest.approx(2.0)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("vaelab", ALIAS)
    assert version.tags["sweep"] == "first" and version.tags["chosen_by"] == "lowest test_nll"
    assert "test NLL 88.00 nats" in version.description and "k=1000" in version.description

    _finished_run(store, "better", nll=86.5, scale=3.0)
    assert "is now version 2" in promote("vaelab", sweep="better")
    assert _champion_output() == pytest.approx(3.0)

    _finished_run(store, "worse", nll=95.0, scale=4.0)
    assert "stays" in promote("vaelab", sweep="worse")
    assert str(client.get_model_version_by_alias("vaelab", ALIAS).version) == "2"
    assert len(client.search_model_versions("name = 'vaelab'")) == 3


def test_a_sweep_without_evaluated_runs_is_an_error(store):
    with pytest.raises(VaelabError, match="no finished run with test_nll"):
        promote("vaelab", sweep="nothing")
