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


def test_a_kept_model_is_logged_on_replay_with_its_scoring_settings(store, tmp_path, monkeypatch):
    from tests.conftest import TINY_TRAIN, committed_params
    from vaelab.model.vae import build_vae
    from vaelab.serving.log import served_model
    from vaelab.tracking import outbox

    client, run_id = store
    path = tmp_path / "model.keras"
    build_vae(committed_params().replace({"train": TINY_TRAIN}).train, seed=0).save(path)
    config = {"seed": 5, "k": 77, "batch_size": 10, "chunk": 7}
    real_log = outbox._log_served_model

    def store_away(*args, **kwargs):
        raise ConnectionError("tracking server away")

    monkeypatch.setattr(outbox, "_log_served_model", store_away)
    box = tmp_path / "state" / "outbox"
    delivery = Delivery(run_id, model=str(path), served=served_model(path, config),
                        status="FINISHED")  # fmt: skip
    assert deliver(delivery, box) is False
    path.unlink()  # the next run replaces the DVC output: the outbox kept its own copy

    monkeypatch.setattr(outbox, "_log_served_model", real_log)
    assert flush(box) == (1, 0)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    defaults = {p.name: p.default for p in served.metadata.signature.params.params}
    assert (defaults["k"], defaults["seed"]) == (77, 5)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_entry_whose_writer_died_is_cleaned_and_a_live_one_kept(tmp_path):
    box = tmp_path / "outbox"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    for pid in (dead, str(os.getpid())):
        (box / f".partial-{pid}-entry" / "files").mkdir(parents=True)
    assert flush(box) == (0, 0)
    assert sorted(p.name for p in box.iterdir()) == [".lock", f".partial-{os.getpid()}-entry"]


def _kept(store, tmp_path, monkeypatch) -> Path:
    """One entry kept in a new outbox, as a delivery to a server that is away leaves it."""
    _, run_id = store
    monkeypatch.setattr(outbox, "send", _raise)
    box = tmp_path / "outbox"
    before = set(box.iterdir()) if box.exists() else set()
    deliver(_delivery(run_id, tmp_path), box)
    monkeypatch.undo()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (entry,) = [p for p in box.iterdir() if p.is_dir() and p not in before]
    return entry


def test_a_flush_while_an_entry_is_renamed_into_place_keeps_it(store, tmp_path, monkeypatch):
    """The moment between the entry's last file and its rename: a flush then must not
    delete it (it used to, once the owner file was gone)."""
    _, run_id = store
    box = tmp_path / "outbox"
    real_rename, seen = os.rename, []

    def flush_first(src, dst):
        seen.append(flush(box))  # another process flushing at this very moment
        real_rename(src, dst)

    monkeypatch.setattr(outbox, "send", _raise)
    monkeypatch.setattr(outbox.os, "rename", flush_first)
    entry = outbox.keep(_delivery(run_id, tmp_path), box, set())
    monkeypatch.undo()
    assert seen == [(0, 0)] and (entry / "delivery.json").is_file()


def test_a_crash_while_a_sent_entry_is_deleted_blocks_nothing(store, tmp_path, monkeypatch):
    entry = _kept(store, tmp_path, monkeypatch)
    newer = _kept(store, tmp_path, monkeypatch)
    (entry / "delivery.json").unlink()  # what rmtree had deleted when the crash came
    assert flush(entry.parent) == (1, 1)  # the damaged one is reported; the newer one goes
    assert not newer.exists() and entry.exists()
    retired = entry.parent / f".retired-{newer.name}"
    retired.mkdir()  # a crash after the rename that retires a sent entry
    assert flush(entry.parent) == (0, 1) and not retired.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: "{not json",
        lambda d: d.replace(d.split('"run_id": "')[1].split('"')[0], "../../x"),
        lambda d: d.replace('"files/0/history.csv"', '"/etc/passwd"'),
        lambda d: d.replace('"files/0/history.csv"', '"../../../../etc/passwd"'),
    ],
)
def test_a_damaged_or_hostile_entry_is_reported_and_kept(store, tmp_path, monkeypatch, damage):
    entry = _kept(store, tmp_path, monkeypatch)
    path = entry / "delivery.json"
    path.write_text(damage(path.read_text()))
    uploads = []
    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", lambda *a: uploads.append(a))
    assert flush(entry.parent) == (0, 1)
    assert uploads == [] and entry.exists() and not (tmp_path / "x").exists()


def test_ctrl_c_during_a_delivery_keeps_it(store, tmp_path, monkeypatch):
    _, run_id = store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", interrupted)
    box = tmp_path / "outbox"
    with pytest.raises(KeyboardInterrupt):
        deliver(_delivery(run_id, tmp_path), box)
    (entry,) = [p for p in box.iterdir() if p.is_dir()]
    assert "metrics:0" in (entry / "sent.json").read_text()


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


def test_a_run_id_that_is_a_path_is_refused_before_any_folder(tmp_path):
    box = tmp_path / "deep" / "outbox"
    with pytest.raises(VaelabError, match="not an MLflow run id"):
        outbox.keep(_delivery("../../x", tmp_path), box, set())
    assert not (tmp_path / "deep").exists() and not list(tmp_path.glob("**/x*"))
