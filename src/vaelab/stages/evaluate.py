"""DVC stage `evaluate`: test-set likelihood and diagnostics, as DVC metrics and in MLflow."""

from vaelab.core.cli import evaluation_backend, run_stage
from vaelab.core.params import Params
from vaelab.tracking.runs import log_evaluation, training_run_id


def main(params: Params) -> None:
    from vaelab.evaluation.evaluate import evaluate  # TensorFlow: after run_stage's quiet import

    run_id = training_run_id(params)
    m = evaluate(params)
    print(
        f"test NLL {m['nll']:.2f} nats (k={m['importance_samples']}), "
        f"-ELBO {m['neg_elbo']:.2f}, active units {m['active_units']}/{m['latent_dim']}"
    )
    log_evaluation(params, run_id, m)


if __name__ == "__main__":
    run_stage(main, backend=evaluation_backend)
