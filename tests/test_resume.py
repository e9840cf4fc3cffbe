"""Training resume never mixes two trainings: a failure after `fit` is completed without
training again, a state with nothing to resume starts clean, and a code change starts anew."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import ROOT
from vaelab.core.params import load_params
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import read_meta
from vaelab.training import loop
from vaelab.training.callbacks import MONITOR
from vaelab.training.history import history_csv, read_history


def test_a_failure_while_writing_the_outputs_is_completed_without_training(tiny_workdir, capfd):
    params = tiny_workdir(epochs=4, early_stopping={"enabled": True, "patience": 1})
    out = Artifacts.of(params)
    out.models.mkdir(parents=True, exist_ok=True)
    out.models.rmdir()
    out.models.write_text("not a folder")  # the model write after `fit` fails
    with pytest.raises(OSError):
        loop.train(params)
    state = loop.state_dir(params, read_meta(out)["md5"])
    trained, best = read_history(state.history), state.best.read_bytes()
    assert not state.backup.exists()  # Keras deleted it when fit returned
    capfd.readouterr()

    out.models.unlink()
    summary = loop.train(params)
    printed = capfd.readouterr()
    assert "Epoch " not in printed.out + printed.err  # not trained again
    assert read_history(out.train_history) == trained
    assert summary["epochs"] == len(trained) == json.loads(out.train_metrics.read_text())["epochs"]
    assert out.model.read_bytes() == best
    assert not state.folder.exists()
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["vaelab"], output_format="list")
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(1, len(trained) + 1))


def test_a_state_without_a_backup_starts_clean(tiny_workdir):
    params = tiny_workdir(epochs=2)
    state = loop.state_dir(params, read_meta(Artifacts.of(params))["md5"])
    state.folder.mkdir(parents=True)
    # a kill between the first epoch's history row and its backup, with an impossible score
    row = {"epoch": 1, MONITOR: -1e9, "val_neg_elbo": -1e9, "loss": 0.0}
    state.history.write_text(history_csv([row]))
    summary = loop.train(params)
    rows = read_history(Artifacts.of(params).train_history)
    assert [r["epoch"] for r in rows] == [1, 2] and min(r["val_neg_elbo"] for r in rows) > 0
    assert summary["best_epoch"] in (1, 2)


def test_the_resume_key_follows_the_train_stages_code(tmp_path, monkeypatch):
    package = tmp_path / "vaelab"
    shutil.copytree(ROOT / "src" / "vaelab", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(loop, "PACKAGE", package, raising=False)
    params = load_params(ROOT / "params.yaml")
    md5 = {"train": "0" * 32}
    before = loop.state_dir(params, md5)
    with (package / "tracking" / "runs.py").open("a") as handle:
        handle.write("\n# logging only: DVC does not re-run train for it\n")
    assert loop.state_dir(params, md5) == before
    with (package / "model" / "losses.py").open("a") as handle:
        handle.write("\n# a fix to the loss\n")
    assert loop.state_dir(params, md5) != before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_in_one_line_a_killed_run_and_a_resumable_state(
    tiny_workdir, signum
):
    params = tiny_workdir(epochs=12)
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    state = loop.state_dir(params, read_meta(Artifacts.of(params))["md5"])
    cmd = [sys.executable, "-m", "vaelab.stages.train"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(read_history(state.history) if state.history.is_file() else []) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"stopped by {signal.Signals(signum).name}:")
    assert state.backup.is_dir() and state.run_id.is_file()
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    run_id = state.run_id.read_text().strip()
    assert mlflow.get_run(run_id).info.status == "KILLED"

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming MLflow run {run_id}" in resumed.stdout
    assert mlflow.get_run(run_id).info.status == "FINISHED"


@pytest.fixture
def our_signal_handlers(monkeypatch):
    """vaelab's SIGINT and SIGTERM handlers, as a stage has them; Python's back afterwards."""
    from vaelab.core import signals

    monkeypatch.setattr(signals, "_received", None, raising=False)  # None again afterwards
    signals.install()
    yield signals
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_sigterm_that_keras_swallows_still_ends_the_training(
    tiny_workdir, monkeypatch, our_signal_handlers
):
    """Keras' pythonify_logs wraps each batch's conversion of the logs in a bare `except:`;
    on JAX the loop waits there most of the time, so that is where a signal usually lands."""
    from keras.src import backend

    params = tiny_workdir(epochs=6)
    real, calls = backend.convert_to_numpy, []

    def signalled_at_the_fifth(value):
        calls.append(value)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # raised here, inside Keras' `except: pass`
        return real(value)

    monkeypatch.setattr(backend, "convert_to_numpy", signalled_at_the_fifth)
    with pytest.raises(our_signal_handlers.Terminated):
        loop.train(params)
    state = loop.state_dir(params, read_meta(Artifacts.of(params))["md5"])
    assert len(read_history(state.history)) < 6
    mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["vaelab"], output_format="list")
    assert run.info.status == "KILLED"


def test_a_signal_while_the_backup_is_written_waits_for_it_to_be_complete(
    tmp_path, monkeypatch, our_signal_handlers
):
    import keras

    from vaelab.training.callbacks import Backup

    def tiny() -> keras.Model:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse")
        return model

    model, backup = tiny(), Backup(str(tmp_path / "backup"))
    backup.set_model(model)
    real_save = model.save_weights

    def save_while_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # lands in the middle of the save
        real_save(*args, **kwargs)

    monkeypatch.setattr(model, "save_weights", save_while_signalled)
    with pytest.raises(our_signal_handlers.Terminated):
        backup.on_epoch_end(0)
    restored = tiny()
    restored.load_weights(tmp_path / "backup" / "latest.weights.h5")
    metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1
