"""End to end: the real DVC pipeline in a fresh git + DVC repository, on a subset of real MNIST."""

from __future__ import annotations

import json

import mlflow
import pytest

from tests.conftest import run
from vaelab.prepare import load_prepared, read_meta


@pytest.mark.slow
def test_dvc_repro_whole_pipeline(project, real_mirror):
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    out = run(["dvc", "repro"], project, env)
    for stage in ("fetch", "prepare", "train", "classifier", "evaluate", "figures"):
        assert f"Running stage '{stage}'" in out
    assert read_meta(project / "data/prepared")["sizes"] == {"train": 500, "val": 100, "test": 600}
    x, y = load_prepared(project / "data/prepared", "test")
    assert x.shape == (600, 28, 28, 1) and set(y) == set(range(10))
    metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
    assert metrics["test_images"] == 600 and 0 < metrics["nll"] < 550
    assert len(list((project / "results/figures").glob("*.png"))) == 8

    # The run landed in the store at the project root, with the test metrics.
    run_id = json.loads((project / "results/train/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    assert mlflow.get_run(run_id).data.metrics["test_nll"] == pytest.approx(metrics["nll"])

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again and "up to date" in again
    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert "latent_accuracy" in shown and "val_neg_elbo" in shown
    run(["dvc", "plots", "show", "-o", "plots"], project)
    assert (project / "plots" / "index.html").stat().st_size > 1000
