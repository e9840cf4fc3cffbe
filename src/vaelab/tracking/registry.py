"""The Model Registry: the best finished run's model, by test NLL, as the ``champion``.

    vaelab register [--sweep NAME | --run RUN_ID]

The registered model is named after the MLflow experiment. A run is registered as a new
version, with tags saying what chose it and a description with its numbers; the
``champion`` alias moves to it only if its test NLL is lower than the champion's, so a worse
sweep never takes the alias. A sweep calls this after its comparison.
Load the champion anywhere with ``mlflow.pyfunc.load_model("models:/<experiment>@champion")``.
"""

from __future__ import annotations

from vaelab.core.errors import VaelabError
from vaelab.tracking.runs import KIND_TAG, tag_filter

ALIAS = "champion"
METRIC = "test_nll"


def best_run(client, experiment_id: str, sweep: str | None):
    """The finished training run with the lowest test NLL (of ``sweep`` if given), or None."""
    query = "attributes.status = 'FINISHED'"
    if sweep:
        query += f" and {tag_filter('sweep', sweep)}"
    runs = client.search_runs([experiment_id], query, order_by=[f"metrics.{METRIC} ASC"])
    found = [r for r in runs if METRIC in r.data.metrics and KIND_TAG not in r.data.tags]
    return found[0] if found else None


def champion_nll(client, name: str) -> float | None:
    """The test NLL of the run behind the current champion, or None if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    return client.get_run(version.run_id).data.metrics[METRIC]


def serving_model_uri(client, run) -> str:
    """The ``models:/`` URI of the serving model the train stage logged in ``run``."""
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
    )
    if not found:
        raise VaelabError(
            f"run {run.info.run_id} has no logged model 'model': its train stage did not finish "
            f"logging (send the outbox: vaelab outbox)"
        )
    return found[0].model_uri


def describe(run) -> str:
    m, t = run.data.metrics, run.data.tags

    def number(key: str) -> str:
        return f"{m[key]:.2f}" if key in m else "?"

    return (
        f"Run {run.info.run_name!r} ({run.info.run_id}): test NLL {number(METRIC)} nats "
        f"(IWAE bound, k={t.get('importance_samples', '?')}, {t.get('test_images', '?')} test "
        f"images); -ELBO {number('test_neg_elbo')} = reconstruction "
        f"{number('test_reconstruction')} + KL {number('test_kl')}; "
        f"{number('test_active_units')} active units."
    )


def promote(experiment: str, sweep: str | None = None, run_id: str | None = None) -> str:
    """Register the chosen run's model; move the champion alias if it is better. Returns
    what happened, in one line."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise VaelabError(f"no MLflow experiment {experiment!r}: check base.experiment")
    run = client.get_run(run_id) if run_id else best_run(client, found.experiment_id, sweep)
    if run is None or METRIC not in run.data.metrics:
        scope = f"run {run_id}" if run_id else f"sweep {sweep!r}" if sweep else experiment
        raise VaelabError(f"{scope}: no finished run with {METRIC}; run the evaluate stage first")
    name, value = experiment, run.data.metrics[METRIC]
    previous = champion_nll(client, name)
    chosen_by = f"run {run.info.run_id} on request" if run_id else f"lowest {METRIC}"
    version = mlflow.register_model(
        serving_model_uri(client, run),
        name,
        tags={
            "sweep": sweep or run.data.tags.get("sweep", ""),
            "chosen_by": chosen_by,
            METRIC: f"{value:.4f}",
        },
    )
    client.update_model_version(name, version.version, description=describe(run))
    if previous is not None and previous <= value:
        return (
            f"registered {name} version {version.version} ({METRIC} {value:.2f}); the champion "
            f"({METRIC} {previous:.2f}) stays"
        )
    client.set_registered_model_alias(name, ALIAS, version.version)
    return f"{name}@{ALIAS} is now version {version.version} ({METRIC} {value:.2f})"
