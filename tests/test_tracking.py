"""Where runs are stored and how they are named."""

from __future__ import annotations

from pathlib import Path

from vaelab.params import Params
from vaelab.tracking import project_root, run_name, tracking_uri


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
    params = Params.model_validate(
        {"train": {"kl": {"beta": 4, "schedule": "cyclical", "free_bits": 0.5}}}
    )
    assert run_name(params) == "beta=4 cyclical fb=0.5, mlp z=32"
    named = Params.model_validate({"train": {"run_name": "my run"}})
    assert run_name(named) == "my run"


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path):
    # `mlflow run` passes its default, relative store on; temporary copies must not use it.
    env = {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db", "DVC_ROOT": str(tmp_path)}
    assert tracking_uri(env, tmp_path / "elsewhere") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    absolute = {"MLFLOW_TRACKING_URI": "sqlite:////srv/mlflow.db"}
    assert tracking_uri(absolute, tmp_path) == "sqlite:////srv/mlflow.db"


def test_sweep_and_parent_tags(tmp_path):
    from vaelab.tracking import run_tags

    env = {"DVC_EXP_BASELINE_REV": "0123456789abcdef", "DVC_EXP_NAME": "loyal-kite"}
    tags = run_tags(Params(), tmp_path, {"train": "abc"}, env)
    assert tags["sweep"] == "0123456" and tags["dvc_exp_name"] == "loyal-kite"
    env = {**env, "VAELAB_SWEEP": "beta-grid", "VAELAB_PARENT_RUN_ID": "p1"}
    tags = run_tags(Params(), tmp_path, {}, env)
    assert tags["sweep"] == "beta-grid" and tags["mlflow.parentRunId"] == "p1"
