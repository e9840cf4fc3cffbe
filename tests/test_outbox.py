"""The outbox: a delivery that fails part-way is replayed without logging anything twice;
half-written entries are cleaned; two flushes cannot run at once."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from vaelab.core.errors import VaelabError
from vaelab.tracking import outbox
from vaelab.tracking.outbox import Delivery, deliver, flush


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("vaelab", (tmp_path / "art").as_uri())
    return client, client.create_run(experiment).info.run_id


def _delivery(run_id: str, tmp_path: Path) -> Delivery:
    artifact = tmp_path / "history.csv"
    artifact.write_text("epoch,loss\n1,2.0\n")
    rows = [{"epoch": e, "loss": 10.0 - e, "val_loss": 11.0 - e} for e in (1, 2, 3)]
    return Delivery(
        run_id,
        metrics={"best_epochs": 3.0},
        rows=rows,
        tags={"kind": "test"},
        artifacts=[(str(artifact), "train")],
        status="FINISHED",
    )


def test_a_replay_after_a_failed_upload_logs_each_value_once(store, tmp_path, monkeypatch):
    client, run_id = store
    real_upload = mlflow.MlflowClient.log_artifact

    def failing_upload(*args, **kwargs):
        raise ConnectionError("artifact store away")

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", failing_upload)
    box = tmp_path / "state" / "outbox"
    assert deliver(_delivery(run_id, tmp_path), box) is False
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", real_upload)
    assert flush(box) == (1, 0)
    for key in ("loss", "val_loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3]
    assert len(client.get_metric_history(run_id, "best_epochs")) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "test"
    assert [a.path for a in client.list_artifacts(run_id, "train")] == ["train/history.csv"]
    assert list(box.iterdir()) == [box / ".lock"]


def test_an_entry_whose_writer_died_is_cleaned_and_a_live_one_kept(tmp_path):
    box = tmp_path / "outbox"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    for name, pid in (("dead", dead), ("alive", str(os.getpid()))):
        partial = box / f".partial-{name}"
        (partial / "files").mkdir(parents=True)
        (partial / "owner.pid").write_text(pid)
    assert flush(box) == (0, 0)
    assert sorted(p.name for p in box.iterdir()) == [".lock", ".partial-alive"]


def test_two_flushes_cannot_run_at_once(tmp_path):
    box = tmp_path / "outbox"
    box.mkdir()
    with open(box / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(VaelabError, match=r"another .* is sending"):
            flush(box)


def test_the_outbox_lives_under_the_state_path(store, tmp_path, monkeypatch):
    from tests.conftest import committed_params
    from vaelab.core.paths import Artifacts

    _, run_id = store
    monkeypatch.setattr(outbox, "send", _raise)
    params = committed_params().replace({"base": {"paths": {"state": "elsewhere/state"}}})
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    box = Artifacts.of(params).outbox()
    assert box == tmp_path.resolve() / "elsewhere" / "state" / "outbox"
    deliver(_delivery(run_id, tmp_path), box)
    (entry,) = [p for p in box.iterdir() if p.is_dir()]
    assert (entry / "sent.json").read_text().strip() == "[]"
    assert (entry / "files" / "0" / "history.csv").is_file()


def _raise(*args, **kwargs):
    raise ConnectionError("server away")
