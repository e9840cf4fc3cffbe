"""DVC stage `train`: the VAE, its history and metrics, tracked in an MLflow run."""

from vaelab.core.cli import run_stage, training_backend
from vaelab.core.params import Params
from vaelab.training.loop import train


def main(params: Params) -> None:
    summary = train(params)
    print(
        f"best epoch {summary['best_epoch']} of {summary['epochs']}: "
        f"val -ELBO {summary['val_neg_elbo']:.2f} nats ({summary['train_seconds']} s)"
    )


if __name__ == "__main__":
    run_stage(main, backend=training_backend)
