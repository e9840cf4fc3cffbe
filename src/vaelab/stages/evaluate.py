"""DVC stage `evaluate`: test-set likelihood and diagnostics, as DVC metrics and in MLflow."""

from vaelab.evaluate import evaluate
from vaelab.params import Params
from vaelab.stages import run_stage


def main(params: Params) -> None:
    m = evaluate(params)
    print(
        f"test NLL {m['nll']:.2f} nats (k={m['importance_samples']}), "
        f"-ELBO {m['neg_elbo']:.2f}, active units {m['active_units']}/{m['latent_dim']}"
    )


if __name__ == "__main__":
    run_stage(main)
