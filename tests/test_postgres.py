"""A real tracking server (PostgreSQL backend, proxied artifacts) and two trainings at once."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest

from tests.conftest import ROOT, commit_all, free_port, run
from vaelab.tracking import compare

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SCRIPT = ROOT / "scripts" / "tracking_server.sh"


@pytest.fixture
def tracking_server(tmp_path):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql); `make test` installs it"
        )
    # Not under pytest's private tmp_path: as root, PostgreSQL runs as the postgres user,
    # which must be able to reach its data folder.
    server_dir = Path(tempfile.mkdtemp(prefix="vaelab-server-"))
    server_dir.chmod(0o755)
    env = {
        "VAELAB_SERVER_DIR": str(server_dir),
        "VAELAB_SERVER_PORT": str(free_port()),
        "VAELAB_PG_PORT": str(free_port()),
    }
    uri = run(["bash", str(SCRIPT), "start"], tmp_path, env, timeout=300).strip().splitlines()[-1]
    yield uri
    run(["bash", str(SCRIPT), "stop"], tmp_path, env)
    shutil.rmtree(server_dir, ignore_errors=True)


def test_two_trainings_at_once_against_postgres_server(project, real_mirror, tracking_server):
    assert tracking_server.startswith("http://127.0.0.1:")
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror), "MLFLOW_TRACKING_URI": tracking_server}
    run(["dvc", "repro"], project, env)
    commit_all(project, "baseline")
    run(
        [
            "python",
            "-m",
            "vaelab",
            "sweep",
            "-S",
            "train.kl.beta=0.5,2",
            "--jobs",
            "2",
            "--name",
            "pg",
            "--out",
            "report",
        ],
        project,
        env,
    )
    assert not (project / "mlflow.db").exists()  # everything went to the server

    mlflow.set_tracking_uri(tracking_server)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("vaelab")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], "tags.sweep = 'pg'")
        if compare.KIND_TAG not in r.data.tags
    ]
    assert sorted(r.data.params["train.kl.beta"] for r in runs) == ["0.5", "2.0"]
    for r in runs:
        run_id = r.info.run_id
        assert r.info.status == "FINISHED"
        for key in ("loss", "val_neg_elbo", "beta", "learning_rate", "epoch_time"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2]
        assert "test_nll" in r.data.metrics and "best_val_neg_elbo" in r.data.metrics
        assert {a.path for a in client.list_artifacts(run_id, "train")} == {
            "train/history.csv",
            "train/model.keras",
        }
        assert len(client.list_artifacts(run_id, "figures")) == 8
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="train/model.keras", dst_path=str(project / "dl")
            )
        )
        assert local.stat().st_size > 1000
        assert mlflow.pyfunc.load_model(f"runs:/{run_id}/model").metadata.signature
    shutil.rmtree(project / "dl")
