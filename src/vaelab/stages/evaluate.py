"""DVC stage `evaluate`: test-set likelihood and diagnostics, as DVC metrics and in MLflow."""

from vaelab.core.cli import run_stage
from vaelab.core.params import Params
from vaelab.core.paths import Artifacts
from vaelab.evaluation.evaluate import evaluate
from vaelab.tracking.runs import log_to_training_run, training_run_id


def main(params: Params) -> None:
    run_id = training_run_id(params)
    m = evaluate(params)
    print(
        f"test NLL {m['nll']:.2f} nats (k={m['importance_samples']}), "
        f"-ELBO {m['neg_elbo']:.2f}, active units {m['active_units']}/{m['latent_dim']}"
    )
    log_to_training_run(
        params,
        run_id,
        metrics={f"test_{k}": float(v) for k, v in m.items()},
        artifacts=[(str(Artifacts.of(params).latent_dims), "evaluate")],
    )


if __name__ == "__main__":
    run_stage(main)
