"""Sweeps on a real two-node Ray cluster on 127.0.0.1: every experiment cloned from a bare
git remote, run as a DVC experiment on some node, pushed to the git and DVC remotes, and
tracked in one MLflow store; afterwards any clone gets them back with `dvc exp pull`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest
from ray.cluster_utils import Cluster

from tests.conftest import commit_all, run
from vaelab.experiments.results import OK, read_rows
from vaelab.tracking.runs import KIND_TAG


@pytest.fixture
def cluster(tmp_path, real_mirror, monkeypatch):
    """Two 1-CPU Ray nodes on loopback; the nodes' environment is this one (as `ray start`
    gives its own to the tasks): the MNIST mirror, the tracking store, the clones' folder."""
    for name, value in {
        "VAELAB_MNIST_MIRROR": str(real_mirror),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "VAELAB_CLONES": str(tmp_path / "clones"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }.items():
        monkeypatch.setenv(name, value)
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


@pytest.mark.slow
def test_a_sweep_on_a_two_node_cluster_lands_everywhere_once(project, cluster, tmp_path):
    remote = tmp_path / "remote.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], tmp_path)
    commit_all(project, "baseline")
    run(["git", "remote", "add", "origin", str(remote)], project)
    run(["git", "push", "-q", "origin", "main"], project)
    grid = "train.kl.beta=0.5,2,4,8"
    command = ["python", "-m", "vaelab", "sweep", "-S", grid, "--name", "on-ray"]
    run([*command, "--out", "report", "--ray", cluster.address], project)

    rows = read_rows(project / "report" / "experiments.csv")
    assert sorted(r["overrides"] for r in rows) == [
        f"train.kl.beta={b}" for b in ("0.5", "2.0", "4.0", "8.0")
    ] and {r["status"] for r in rows} == {OK}
    pushed = run(["git", "ls-remote", str(remote), "refs/exps/*"], tmp_path).split()
    assert sorted(p.rsplit("/", 1)[-1] for p in pushed if p.startswith("refs/")) == [
        f"on-ray-{i}-s42" for i in range(1, 5)
    ]
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(
        experiment_names=["vaelab"], filter_string="tags.sweep = 'on-ray'", output_format="list"
    )
    trained = [r for r in runs if KIND_TAG not in r.data.tags]
    assert sorted(r.info.status for r in trained) == ["FINISHED"] * 4
    assert len({r.data.tags["mlflow.parentRunId"] for r in trained}) == 1

    other = tmp_path / "other"
    run(["git", "clone", "-q", str(remote), str(other)], tmp_path)
    run(["dvc", "exp", "pull", "origin", "on-ray-3-s42"], other)
    assert "on-ray-3-s42" in run(["dvc", "exp", "show", "--csv"], other)
    run(["dvc", "exp", "apply", "on-ray-3-s42"], other)
    run(["dvc", "pull", "models/model.keras"], other)
    assert (other / "models" / "model.keras").stat().st_size > 0
