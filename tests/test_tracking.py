"""Where runs are stored and how they are named."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import ROOT, commit_all, committed_params, run
from vaelab.core.paths import project_root
from vaelab.tracking.runs import run_name, run_tags
from vaelab.tracking.store import tracking_uri


def test_explicit_tracking_uri_wins(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "DVC_ROOT": str(tmp_path)}
    assert tracking_uri(env, tmp_path) == "http://127.0.0.1:5000"


def test_default_store_is_absolute_at_the_project_root(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    deep = tmp_path / "src" / "vaelab"
    deep.mkdir(parents=True)
    uri = tracking_uri({}, deep)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()


def test_dvc_root_points_temporary_experiment_copies_home(tmp_path):
    # `dvc exp run --queue/--temp` runs stages in .dvc/tmp/exps/<copy> with DVC_ROOT set to
    # the user's repository: runs must land in its store, not in the copy.
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert project_root({"DVC_ROOT": str(tmp_path)}, copy) == tmp_path.resolve()
    assert tracking_uri({"DVC_ROOT": str(tmp_path)}, copy).endswith(f"{tmp_path}/mlflow.db")


def test_run_name_says_what_differs():
    kl = {"beta": 4, "schedule": "cyclical", "free_bits": 0.5}
    params = committed_params().replace({"train": {"kl": kl, "prior": {"kind": "standard"}}})
    arch = params.train.architecture
    assert run_name(params) == f"beta=4 cyclical fb=0.5, {arch.kind} z={arch.latent_dim}"
    learned = {"kl": {"beta": 2, "free_bits": 0.0}, "prior": {"kind": "mixture", "components": 8}}
    params = committed_params().replace({"train": learned})
    assert run_name(params).startswith(f"beta=2 {params.train.kl.schedule} mixture-8, ")
    named = committed_params().replace({"train": {"run_name": "my run"}})
    assert run_name(named) == "my run"


def test_a_runs_name_lists_the_params_that_differ_from_the_committed_ones(tmp_path):
    """Every run of the ablation was named ``beta=1 constant fb=0.25, mlp z=32``: in the
    MLflow UI nothing told early stopping at patience 5 from the default."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "not-a-repo"
    repo.mkdir(), elsewhere.mkdir()
    run(["git", "init", "-q"], repo)
    shutil.copy(ROOT / "params.yaml", repo)
    commit_all(repo, "params")
    default = committed_params()
    changed = default.replace(
        {
            "base": {"seed": 2},
            "train": {"early_stopping": {"patience": 5}, "kl": {"beta": 0.5}},
            "tracking": {"sweep": "ablation"},  # how it is logged, not what it is
        }
    )
    assert run_name(changed, repo) == "base.seed=2 kl.beta=0.5 early_stopping.patience=5"
    assert run_name(default, repo) == run_name(default)  # nothing differs: the KL and model
    assert run_name(changed, elsewhere) == run_name(changed)  # outside git
    many = default.replace({"prepare": {"augment": {"rotation": 17.5}}, "train": {"epochs": 7}})
    assert run_name(many, repo) == "augment.rotation=17.5 train.epochs=7"
    tutorial = {  # 21 changes: more than MLflow's 250 characters
        "prepare": {"binarize": "none", "augment": {"enabled": True, "rotation": 20, "shift": 0.2,
                    "shear": 0.2, "zoom": 0.2, "horizontal_flip": True}},
        "train": {"batch_size": 32, "epochs": 60, "architecture": {"batch_norm": True},
                  "likelihood": {"kind": "gaussian"},
                  "kl": {"schedule": "linear", "free_bits": 0.0, "warmup": 5},
                  "optimizer": {"learning_rate": 0.001}, "lr_schedule": {"name": "exponential"},
                  "early_stopping": {"patience": 5}},
        "evaluate": {"importance_samples": 50, "prior_samples": 500},
    }  # fmt: skip
    name = run_name(default.replace(tutorial), repo)
    assert len(name) == 250 and name.startswith("prepare.binarize=none ") and name[-1] == "…"


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path):
    # `mlflow run` passes its default, relative store on; temporary copies must not use it.
    env = {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db", "DVC_ROOT": str(tmp_path)}
    assert tracking_uri(env, tmp_path / "elsewhere") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    absolute = {"MLFLOW_TRACKING_URI": "sqlite:////srv/mlflow.db"}
    assert tracking_uri(absolute, tmp_path) == "sqlite:////srv/mlflow.db"


def test_sweep_and_parent_tags(tmp_path):
    env = {"DVC_EXP_BASELINE_REV": "0123456789abcdef", "DVC_EXP_NAME": "loyal-kite"}
    tags = run_tags(committed_params(), tmp_path, {"train": "abc"}, env)
    assert tags["sweep"] == "0123456" and tags["dvc_exp_name"] == "loyal-kite"
    # a sweep's name and parent travel in the experiment's own params, not the environment
    params = committed_params().replace(
        {"tracking": {"sweep": "beta-grid", "parent_run": "0123456789abcdef" * 2}}
    )
    tags = run_tags(params, tmp_path, {}, {**env, "VAELAB_SWEEP": "leaked"})
    assert tags["sweep"] == "beta-grid" and tags["mlflow.parentRunId"] == "0123456789abcdef" * 2


def test_one_function_connects_to_the_tracking_store():
    """Only `vaelab.tracking.store.connect` points MLflow at a store, so every command gets the
    same URI resolution and the same HTTP limits."""
    callers = []
    for folder in ("src", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr == "set_tracking_uri":
                    callers.append(str(path.relative_to(ROOT)))
    assert callers == ["src/vaelab/tracking/store.py"]


def test_connect_sets_short_http_limits(monkeypatch, tmp_path):
    from vaelab.tracking.store import HTTP_LIMITS, connect

    environ = {"DVC_ROOT": str(tmp_path)}
    uri = connect(environ=environ)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert {k: environ[k] for k in HTTP_LIMITS} == HTTP_LIMITS
    assert int(HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30


def test_after_one_failed_epoch_the_logger_stops_calling_the_server(monkeypatch, tmp_path):
    from vaelab.tracking import outbox
    from vaelab.tracking.epochs import MlflowEpochLogger
    from vaelab.training.callbacks import EpochHistory

    calls = []

    def hanging_server(delivery, sent, record=None):
        calls.append(len(delivery.rows))
        raise TimeoutError("read timed out")

    monkeypatch.setattr(outbox, "send", hanging_server)
    history = EpochHistory(tmp_path / "history.csv")
    logger = MlflowEpochLogger(history, "run", logged_upto=0)
    for epoch in range(5):
        history.on_epoch_end(epoch, {"loss": 1.0})
        logger.on_epoch_end(epoch, {})
    assert calls == [1]  # one timeout on the training thread, not one per epoch
    assert [row["epoch"] for row in logger.pending()] == [1, 2, 3, 4, 5]


def test_make_ui_serves_127_0_0_1_and_links_to_the_project_runs(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import free_port

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(VAELAB_UI_PORT=str(port), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaelab", "ui"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()
        link = first.split(": ", 1)[1].strip()
        base, fragment = link.split("/#/")
        assert base == f"http://127.0.0.1:{port}"
        experiment_id = fragment.split("/")[1]
        assert fragment == f"experiments/{experiment_id}/runs?workflowType=machine_learning"
        api = f"{base}/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(api, timeout=5) as response:
                    body = json.load(response)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
        assert body["experiment"]["name"] == "vaelab"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_restarted_command_resumes_its_run_and_refuses_other_params(tmp_path):
    import mlflow
    import pytest

    from vaelab.core.errors import VaelabError
    from vaelab.tracking.runs import KIND_TAG, start_command_run

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    job, grid = tmp_path / "sweeps" / "b", {"sweep.overrides": "train.kl.beta=0.5,2"}
    with start_command_run("vaelab", "sweep", "b", job, grid) as first:
        pass
    with start_command_run("vaelab", "sweep", "b", job, grid) as again:  # e.g. after a kill
        assert again.info.run_id == first.info.run_id
    run = mlflow.MlflowClient().get_run(first.info.run_id)
    assert run.data.tags[KIND_TAG] == "sweep" and run.data.tags["sweep"] == "b"
    assert run.info.run_name == "sweep b" and run.info.status == "FINISHED"
    with pytest.raises(VaelabError, match=r"b ran before with \{'sweep.overrides': 'train.kl"):
        start_command_run("vaelab", "sweep", "b", job, {"sweep.overrides": "train.kl.beta=4"})
    mlflow.delete_run(first.info.run_id)  # a deleted run is not resumed
    with start_command_run("vaelab", "sweep", "b", job, grid) as fresh:
        assert fresh.info.run_id != first.info.run_id
    assert (job / "mlflow_run_id").read_text() == fresh.info.run_id
