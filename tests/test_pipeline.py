"""End to end: the real DVC pipeline in a fresh git + DVC repository, on a subset of real MNIST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import commit_all, run
from vaelab.core.params import load_params
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import load_prepared, read_meta
from vaelab.training.history import read_history


@pytest.mark.slow
def test_dvc_repro_whole_pipeline(project, real_mirror, monkeypatch):
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    code_commit = commit_all(project, "the code")
    out = run(["dvc", "repro"], project, env)
    for stage in ("fetch", "prepare", "train", "classifier", "evaluate", "figures"):
        assert f"Running stage '{stage}'" in out
    monkeypatch.chdir(project)
    paths = Artifacts.of(load_params())
    assert read_meta(paths)["sizes"] == {"train": 500, "val": 100, "test": 600}
    x, y = load_prepared(paths, "test")
    assert x.shape == (600, 28, 28, 1) and set(y) == set(range(10))
    metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
    assert metrics["test_images"] == 600 and 0 < metrics["nll"] < 550
    assert len(list((project / "results/figures").glob("*.png"))) == 8

    # The run landed in the store at the project root, with the test metrics.
    run_id = json.loads((project / "results/train/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    training_run = mlflow.get_run(run_id)
    assert training_run.data.metrics["test_nll"] == pytest.approx(metrics["nll"])
    assert training_run.data.tags["mlflow.source.git.commit"] == code_commit
    # MLflow's dataset inputs carry the hash dvc.lock records for the prepared data
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (prepared,) = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared"]
    digests = {d.dataset.digest for d in training_run.inputs.dataset_inputs}
    assert digests == {prepared["md5"]}

    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again and "up to date" in again
    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert "latent_accuracy" in shown and "val_neg_elbo" in shown
    run(["dvc", "plots", "show", "-o", "plots"], project)
    assert (project / "plots" / "index.html").stat().st_size > 1000

    # Two experiments' figures side by side (only the figures stage re-runs for these)
    commit_all(project, "the run")
    for name, columns in (("exp-a", 6), ("exp-b", 8)):
        run(["dvc", "exp", "run", "-n", name, "-S", f"figures.columns={columns}"], project, env)
    run(["dvc", "plots", "diff", "exp-a", "exp-b", "-o", "diff"], project)
    html = (project / "diff" / "index.html").read_text()
    for name in ("exp-a", "exp-b"):
        shown = [p for p in (project / "diff").rglob("*.png") if p.name.startswith(name)]
        assert any("reconstructions" in p.name for p in shown), (name, shown)
        assert f"{name}_results_figures_reconstructions" in html.replace("/", "_")


def test_a_copy_of_the_repository_runs_its_own_code(project, real_mirror):
    # Queued DVC experiments run in temporary copies; with an editable install they would
    # import the workspace's src/ instead of the code the experiment was queued with.
    stage = project / "src/vaelab/stages/fetch.py"
    marker = "print('code of this copy')\n\n\ndef main("
    stage.write_text(stage.read_text().replace("def main(", marker))
    out = run(["dvc", "repro", "fetch"], project, {"VAELAB_MNIST_MIRROR": str(real_mirror)})
    assert "code of this copy" in out


@pytest.mark.slow
def test_sigkill_during_dvc_repro_then_dvc_repro_resumes(project, real_mirror):
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=10)
    params["train"]["early_stopping"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "prepare"], project, env)
    full_env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=project,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while True:
        histories = list(project.glob(".vaelab/train-*/history.csv"))
        if histories and len(read_history(histories[0])) >= 3:
            break
        assert proc.poll() is None and time.monotonic() < deadline, "training ended early"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training process under it
    proc.wait()
    done = len(read_history(histories[0]))
    assert done < 10 and not (project / "results/train/history.csv").exists()

    out = run(["dvc", "repro", "train"], project, env)
    assert "resuming MLflow run" in out
    assert out.count("Epoch ") <= 10 - done + 1
    rows = read_history(project / "results/train/history.csv")
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    run_id = json.loads((project / "results/train/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == list(range(1, 11))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("vaelab").experiment_id])) == 1
