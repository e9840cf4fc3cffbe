"""Against a real MLflow tracking server: it goes away mid-training, nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import free_port
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import read_meta
from vaelab.training.history import read_history
from vaelab.training.loop import state_dir


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'store.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        import os
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "server")
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.mark.slow
def test_server_lost_mid_training_then_outbox_sends_everything(tiny_workdir, server, monkeypatch):
    params = tiny_workdir(epochs=8)
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    history = state_dir(params, read_meta(Artifacts.of(params))["md5"]).history
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaelab.stages.train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(read_history(history) if history.is_file() else []) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    server.stop()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "vaelab outbox" in err
    outputs = Artifacts.of(params)
    assert [r["epoch"] for r in read_history(outputs.train_history)] == list(range(1, 9))
    assert outputs.model.stat().st_size > 0

    # Still down: the outbox keeps everything and says so.
    still = subprocess.run(
        [sys.executable, "-m", "vaelab", "outbox"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert still.returncode != 0 and "does not answer" in still.stderr

    server.start()
    sent = subprocess.run(
        [sys.executable, "-m", "vaelab", "outbox"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sent.returncode == 0, sent.stderr
    assert "0 still kept" in sent.stdout

    run_id = json.loads(outputs.train_run.read_text())["run_id"]
    mlflow.set_tracking_uri(server.uri)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["epochs_run"] == "8"
    for key in ("val_loss", "beta", "learning_rate"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, 9))
    assert {a.path for a in client.list_artifacts(run_id, "train")} == {"train/history.csv"}
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.signature is not None
