"""Bad input anywhere ends in one message naming the file and the fix, exit code 1, and no
traceback: stages, the compare and sweep commands, and the files between stages."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import ROOT, run_module
from vaelab.core.atomic import save_model
from vaelab.core.cli import os_error_message, run_stage
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import read_meta
from vaelab.model.vae import build_vae


@pytest.fixture
def trained_looking(tiny_workdir):
    """A work dir as after train and classifier, with an untrained tiny VAE and a fake run."""
    params = tiny_workdir().replace(
        {"evaluate": {"importance_samples": 4, "prior_samples": 100}, "figures": {"grid": 2}}
    )
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    paths = Artifacts.of(params)
    save_model(build_vae(params.train, seed=0), paths.model)
    paths.train_run.parent.mkdir(parents=True)
    paths.train_run.write_text(json.dumps({"run_id": "0" * 32, "experiment": "vaelab"}))
    paths.train_history.write_text("epoch,loss,val_loss\n1,2.0,2.5\n")
    paths.classifier_metrics.parent.mkdir(parents=True)
    paths.classifier_metrics.write_text('{"test_accuracy": 0.98}\n')
    return params, paths


def _fails(main, *fragments: str) -> str:
    with pytest.raises(SystemExit) as info:
        run_stage(main)
    message = str(info.value.code)
    assert message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_a_missing_or_corrupt_model_is_named(trained_looking, damage):
    from vaelab.stages.figures import main

    _, paths = trained_looking
    data = paths.model.read_bytes()
    if damage == "missing":
        paths.model.unlink()
    else:
        paths.model.write_bytes(b"\x00" * 64 if damage == "garbage" else data[: len(data) // 2])
    _fails(main, str(paths.model), "dvc checkout", "dvc repro train")


def test_a_corrupt_classifier_model_is_named(trained_looking):
    from vaelab.stages.evaluate import main

    _, paths = trained_looking
    paths.classifier_model.write_bytes(b"PK\x03\x04 not really a zip")
    _fails(main, str(paths.classifier_model), "dvc repro classifier")


@pytest.mark.parametrize("text", ["{not json", '{"accuracy": 1}', '{"test_accuracy": "high"}'])
def test_a_corrupt_classifier_metrics_file_is_named(trained_looking, text):
    from vaelab.stages.evaluate import main

    _, paths = trained_looking
    paths.classifier_metrics.write_text(text)
    _fails(main, str(paths.classifier_metrics), "dvc repro classifier")


@pytest.mark.parametrize("bad", ["1,,2.5", "1,2.0", "x,2.0,2.5"])
def test_a_damaged_history_file_is_named(trained_looking, bad):
    from vaelab.stages.figures import main

    _, paths = trained_looking
    paths.train_history.write_text(f"epoch,loss,val_loss\n{bad}\n")
    _fails(main, str(paths.train_history), "line 2", "dvc checkout")


@pytest.mark.parametrize("key", ["md5", "seed"])
def test_meta_json_missing_a_key_is_named(trained_looking, key):
    from vaelab.stages.train import main

    _, paths = trained_looking
    meta = json.loads(paths.prepared_meta.read_text())
    del meta[key]
    paths.prepared_meta.write_text(json.dumps(meta))
    _fails(main, str(paths.prepared_meta), key, "dvc repro prepare")


def test_a_resumed_run_from_another_store_is_named(trained_looking, tmp_path, monkeypatch):
    from vaelab.stages.train import main
    from vaelab.training.loop import state_dir

    params, paths = trained_looking
    run_file = state_dir(params, read_meta(paths)["md5"]).run_id
    run_file.parent.mkdir(parents=True)
    run_file.write_text("f" * 32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    _fails(main, str(run_file), "not in the tracking store", "MLFLOW_TRACKING_URI")


def test_os_errors_get_the_fix_that_fits():
    missing = os_error_message(FileNotFoundError(errno.ENOENT, "No such file", "x.json"))
    assert "x.json" in missing and "free disk space" not in missing and "restore" in missing
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", "y"))
    assert "free disk space" in full
    denied = os_error_message(PermissionError(errno.EACCES, "Permission denied", "z"))
    assert "permissions" in denied and "free disk space" not in denied


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_commands_refuse_a_bad_params_file_without_a_traceback(tmp_path, command):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["experiment"] = ""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["-S", "train.kl.beta=1,2"] if command.endswith("sweep") else []
    result = run_module("vaelab", tmp_path, command, *args)
    assert result.returncode == 1
    assert "base.experiment" in result.stderr and "Traceback" not in result.stderr


def test_a_quote_in_a_sweep_name_still_finds_its_runs(tmp_path):
    from vaelab.tracking.search import collect

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("vaelab", (tmp_path / "art").as_uri())
    client.create_run(experiment, tags={"sweep": "bob's grid"})
    client.create_run(experiment, tags={"sweep": "other"})
    assert len(collect("vaelab", "bob's grid")) == 1
