"""Comparing KL weightings: queued DVC experiments, the comparison report, MLflow Projects,
and getting an old model back from git + DVC."""

from __future__ import annotations

import hashlib
import json

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, commit_all, run
from vaelab import cli
from vaelab.experiments import compare
from vaelab.tracking.runs import KIND_TAG


def _store(project):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient()


def _training_runs(client, **tags):
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    experiment = client.get_experiment_by_name("vaelab")
    runs = client.search_runs([experiment.experiment_id], query)
    return [r for r in runs if KIND_TAG not in r.data.tags]


@pytest.mark.slow
def test_queued_sweep_two_at_once_lands_in_the_project_store(project, real_mirror):
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    run(["dvc", "repro"], project, env)
    commit_all(project, "baseline")
    out = run(
        [
            "python",
            "-m",
            "vaelab",
            "sweep",
            "-S",
            "train.kl.beta=0.5,1,2",  # 1 is the baseline's: DVC reuses that run
            "--jobs",
            "2",
            "--name",
            "beta-test",
            "--out",
            "report",
        ],
        project,
        env,
    )
    assert "beta=0.5" in out and "beta=2" in out
    client = _store(project)
    runs = _training_runs(client, sweep="beta-test")
    assert sorted(r.data.params["train.kl.beta"] for r in runs) == ["0.5", "1.0", "2.0"]
    parent = client.search_runs(
        [client.get_experiment_by_name("vaelab").experiment_id],
        f"tags.`{KIND_TAG}` = 'sweep'",
    )[0]
    for r in runs:
        assert r.info.status == "FINISHED"
        if r.data.params["train.kl.beta"] != "1.0":  # the two trained in the sweep
            assert r.data.tags["dvc_exp_name"]
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [1, 2]
        assert "test_nll" in r.data.metrics
        assert client.list_artifacts(r.info.run_id, "figures")
    assert not list(project.glob(".dvc/tmp/exps/**/mlflow.db"))
    table = (project / "report" / "runs.csv").read_text()
    assert table.count("\n") == 4 and "missing" not in table
    shown = run(["dvc", "exp", "show", "--csv"], project)
    assert "train.kl.beta" in shown and "0.5" in shown and "nll" in shown


def _png(path):
    plt.imsave(path, np.random.default_rng(0).random((20, 40)), cmap="gray")
    return path


def _synthetic_store(tmp_path):
    """A store with two finished runs of sweep s1, one failed, and one of another sweep."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("vaelab", (tmp_path / "art").as_uri())
    for beta, rate in ((0.5, 40.0), (4.0, 10.0)):
        with mlflow.start_run(
            experiment_id=experiment, run_name=f"beta={beta:g} linear", tags={"sweep": "s1"}
        ):
            prior = "mixture" if beta > 1 else "standard"
            mlflow.log_params(
                {
                    "train.kl.beta": beta,
                    "train.kl.schedule": "linear",
                    "train.kl.free_bits": 0.0,
                    "train.prior.kind": prior,
                }
            )
            mlflow.log_metrics(
                {
                    "test_nll": 90 + beta,
                    "test_kl": rate,
                    "test_reconstruction": 100 - rate,
                    "test_neg_elbo": 100.0,
                }
            )
            for step in (1, 2, 3):
                mlflow.log_metric("val_neg_elbo", 110 - step, step=step)
            for name in ("reconstructions", "prior_samples"):
                mlflow.log_artifact(str(_png(tmp_path / f"{name}.png")), "figures")
    with mlflow.start_run(experiment_id=experiment, run_name="beta=8 linear", tags={"sweep": "s1"}):
        mlflow.log_param("train.kl.beta", 8.0)
        mlflow.log_metric("val_neg_elbo", float("nan"), step=1)
        mlflow.end_run("FAILED")
    with mlflow.start_run(experiment_id=experiment, tags={"sweep": "other"}):
        pass

    return experiment


def test_compare_report_shows_failed_run_as_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = _synthetic_store(tmp_path)
    cli.main(["compare", "--experiment", "vaelab", "--sweep", "s1", "--out", "report"])
    rows = (tmp_path / "report" / "runs.csv").read_text().splitlines()
    assert len(rows) == 4
    failed = next(r for r in rows if "beta=8" in r)
    assert ",mixture," in next(r for r in rows if "beta=4" in r)  # the prior, a column
    assert "FAILED" in failed and failed.count("missing") >= 5
    table = (tmp_path / "report" / "runs.md").read_text().splitlines()
    assert len(table) == 5 and table[1].count("---|") == len(compare.COLUMNS)
    assert "missing" in next(line for line in table if "beta=8" in line)
    for name in ("rate_distortion", "validation_curves", "samples_side_by_side"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 5000
    comparison = mlflow.search_runs(
        [experiment], f"tags.`{KIND_TAG}` = 'comparison'", output_format="list"
    )
    assert len(comparison) == 1
    logged = {
        a.path
        for a in mlflow.MlflowClient().list_artifacts(comparison[0].info.run_id, "comparison")
    }
    assert "comparison/rate_distortion.png" in logged


@pytest.mark.slow
def test_mlproject_train_entry_point(project, real_mirror):
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    run(["dvc", "repro"], project, env)
    commit_all(project, "baseline")
    run(
        [
            "mlflow",
            "run",
            ".",
            "-e",
            "train",
            "-P",
            "beta=3",
            "-P",
            "epochs=1",
            "-P",
            "latent_dim=3",
            "-P",
            "schedule=constant",
            "-P",
            "free_bits=0",
            "-P",
            "prior=standard",
            "--env-manager",
            "local",
            "--experiment-name",
            "vaelab",
        ],
        project,
        {**env, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
    )
    client = _store(project)
    runs = _training_runs(client, beta="3")
    assert len(runs) == 1  # the project's run is the training run: no second, empty run
    (r,) = runs
    assert r.info.status == "FINISHED"
    assert r.info.run_name == (
        "train.epochs=1 architecture.latent_dim=3 kl.beta=3 kl.schedule=constant "
        "prior.kind=standard"
    )
    assert r.data.params["train.architecture.latent_dim"] == "3"
    assert r.data.tags["mlflow.project.entryPoint"] == "train"
    assert "test_nll" in r.data.metrics and r.data.tags["data_md5.train"]


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_old_model_back_from_git_and_dvc(project, real_mirror, tmp_path):
    env = {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    model = project / "models" / "model.keras"
    run(["dvc", "repro"], project, env)
    first = commit_all(project, "beta 1")
    first_md5 = _md5(model)
    run(["dvc", "push"], project)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["kl"]["beta"] = 4.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], project, env)
    commit_all(project, "beta 4")
    run(["dvc", "push"], project)
    assert _md5(model) != first_md5

    run(["git", "checkout", "-q", first], project)
    run(["dvc", "checkout"], project)
    assert _md5(model) == first_md5

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["git", "checkout", "-q", first], clone)
    run(["dvc", "pull", "models/model.keras"], clone)
    assert _md5(clone / "models" / "model.keras") == first_md5

    # The commit names its MLflow run: results/train/run.json is in git.
    run_id = json.loads(run(["git", "show", f"{first}:results/train/run.json"], project))["run_id"]
    found = _store(project).get_run(run_id)
    assert found.data.params["train.kl.beta"] == "1.0"


@pytest.mark.slow
def test_mlproject_compare_entry_point_in_a_virtualenv(project):
    """`--env-manager virtualenv` builds its environment from python_env.yaml; the project
    run `mlflow run` creates is the comparison run."""
    _synthetic_store(project)
    run(
        [
            "mlflow",
            "run",
            ".",
            "-e",
            "compare",
            "-P",
            "sweep=s1",
            "--env-manager",
            "virtualenv",
            "--experiment-name",
            "vaelab",
        ],
        project,
        {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
        timeout=1200,
    )
    assert len((project / "reports/compare/runs.csv").read_text().splitlines()) == 4
    client = _store(project)
    experiment = client.get_experiment_by_name("vaelab").experiment_id
    (comparison,) = client.search_runs([experiment], f"tags.`{KIND_TAG}` = 'comparison'")
    assert comparison.data.tags["mlflow.project.entryPoint"] == "compare"
    assert comparison.data.tags["mlflow.project.env"] == "virtualenv"
    assert client.list_artifacts(comparison.info.run_id, "comparison")


def test_a_sweeps_grid_is_a_plan_of_its_own(tmp_path, monkeypatch):
    from vaelab.core.errors import VaelabError
    from vaelab.core.overrides import differences, pairs
    from vaelab.core.params import load_params
    from vaelab.experiments.sweep import sweep_plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    folder = tmp_path / "reports" / "sweeps" / "g"
    grid = ["train.kl.beta=0.5,1.0", "train.kl.schedule=linear,cyclical"]
    plan = sweep_plan("g", grid, folder, 42)
    assert [e.name for e in plan.experiments] == ["g-1-s42", "g-2-s42", "g-3-s42", "g-4-s42"]
    assert [e.overrides for e in plan.experiments] == [
        "train.kl.beta=0.5", "train.kl.beta=0.5 train.kl.schedule=cyclical", "",
        "train.kl.schedule=cyclical",
    ]  # fmt: skip
    assert (folder / "baseline.yaml").exists()  # the sweep's own baseline, kept for a resume
    current = load_params()
    assert pairs(differences(plan.experiments[1].params, current)) == [
        "train.kl.beta=0.5",
        "train.kl.schedule=cyclical",
    ]
    with pytest.raises(VaelabError, match=r"'train\.kl\.beta' is not KEY=VALUE"):
        sweep_plan("g", ["train.kl.beta"], folder, 42)


@pytest.mark.slow
def test_compare_reads_every_run_past_one_search_page(tmp_path, monkeypatch):
    """1,005 runs: MLflow answers at most 1,000 per search; the newest must not be dropped."""
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("vaelab", (tmp_path / "art").as_uri())
    for i in range(1005):
        client.create_run(
            experiment, tags={"sweep": "big"}, run_name=f"r{i}", start_time=10**12 + i
        )
    rows = compare.collect("vaelab", "big")
    assert len(rows) == 1005 and rows[-1].fields["info"]["run_name"] == "r1004"


def test_the_side_by_side_figure_keeps_the_best_runs_when_there_are_many():
    rows = [
        compare.RunRow(f"{i:032x}", {"nll": str(100.0 - i % 97), "beta": "1"}) for i in range(200)
    ]
    shown = compare.shown_side_by_side(rows)
    assert len(shown) == compare.SIDE_BY_SIDE
    worst_shown = max(r.number("nll") for r in shown)
    assert all(r.number("nll") >= worst_shown for r in rows if r not in shown)
    fig = compare.side_by_side(shown, {r.run_id: {} for r in shown}, "t")
    assert fig.get_size_inches()[1] * 100 < 2**16  # save_figure's 100 dpi
    plt.close(fig)


def test_the_local_executor_runs_the_dvc_vaelab_is_installed_with(tmp_path, monkeypatch):
    """Started as `.venv/bin/vaelab` with no virtualenv on PATH, an experiment still reaches
    DVC (here, DVC's own refusal outside a repository), not a missing-file error."""
    from vaelab.executors import Job
    from vaelab.executors.local import LocalExecutor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    (outcome,) = LocalExecutor().run([Job("x-baseline-s1", "train", ("base.seed=1",))])
    assert not outcome.ok and "not inside of a DVC repository" in outcome.log


def test_the_comparisons_rate_distortion_plane_has_lines_of_equal_elbo_and_every_label():
    """A sweep over KL weightings reads along lines of equal -ELBO, as the ablation's plane
    does (compare's own figure had none); a run without metrics is named in the title."""
    rows = [
        compare.RunRow(f"{beta:032}", {"beta": str(beta), "kl": rate, "reconstruction": d})
        for beta, rate, d in ((1, 27.0, 62.0), (2, 18.0, 80.0), (4, 10.0, 99.0))
    ]
    rows.append(compare.RunRow("f" * 32, {"beta": "8"}))  # failed: no metrics
    figure = compare.rate_distortion(rows)
    (ax,) = figure.axes
    texts = [t.get_text() for t in ax.texts]
    assert {"beta=1", "beta=2", "beta=4"} <= set(texts)
    labelled = [float(t.removeprefix("-ELBO ")) for t in texts if t.startswith("-ELBO ")]
    sums = [np.add(*line.get_data()) for line in ax.lines if len(line.get_xdata()) == 2]
    drawn = {round(float(s[0]), 6) for s in sums if np.isclose(s[0], s[1])}  # x + y constant
    assert labelled and {round(v, 6) for v in labelled} <= drawn
    assert "1 run(s) without metrics" in ax.get_title()
    plt.close(figure)
