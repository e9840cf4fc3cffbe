"""The training tricks, measured: switch each off (or to the tutorial's variant) one at a time
from the default profile, as DVC experiments, and tabulate the test metrics.

    python bench/ablation.py [--jobs 1] [--only NAME,NAME] [-S extra override ...] [--report]

Every variant is a `dvc exp run --queue -n abl-<name>` with its overrides (shown by
`dvc exp show`), all tagged sweep=ablation in MLflow; the table goes to
reports/ablation.md. Likelihood-based numbers are only comparable between Bernoulli runs:
for the Gaussian (MSE) variant read recon_mse_grayscale instead. A variant whose experiment
failed (e.g. diverged) shows as missing. ``--report`` only re-tabulates finished experiments.
"""

from __future__ import annotations

import argparse
import os

from vaelab.core.atomic import write_text
from vaelab.core.params import load_params
from vaelab.core.paths import REPORTS, Artifacts
from vaelab.experiments import compare, sweep
from vaelab.tracking.runs import SWEEP_ENV
from vaelab.tracking.store import connect

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "augment-digit-safe": ["prepare.augment.enabled=true"],
    "augment-tutorial-flips": [
        "prepare.augment.enabled=true",
        "prepare.augment.shear=0.2",
        "prepare.augment.horizontal_flip=true",
    ],
    "lr-constant": ["train.lr_schedule.name=constant"],
    "lr-exponential": ["train.lr_schedule.name=exponential"],
    "rmsprop": ["train.optimizer.name=rmsprop"],
    "sgd-momentum": ["train.optimizer.name=sgd", "train.optimizer.learning_rate=0.01"],
    "sgd-momentum-lr1e-3": ["train.optimizer.name=sgd"],
    "batch-norm": ["train.architecture.batch_norm=true"],
    "no-early-stopping": ["train.early_stopping.enabled=false"],
    "no-kl-warmup": ["train.kl.schedule=constant"],
    "kl-cyclical": ["train.kl.schedule=cyclical"],
    "beta-0.5": ["train.kl.beta=0.5"],
    "beta-2": ["train.kl.beta=2"],
    "free-bits-0.25": ["train.kl.free_bits=0.25"],
    "gaussian-mse": ["train.likelihood.kind=gaussian"],
    "static-binarization": ["prepare.binarize=static"],
}
COLUMNS = [
    "test_nll",
    "test_neg_elbo",
    "test_active_units",
    "test_recon_mse_grayscale",
    "train_seconds",
]


def run_variants(chosen: list[str], set_params: list[str], jobs: int) -> None:
    """Queue one DVC experiment per variant and run the queue with ``jobs`` workers."""
    env = {**os.environ, SWEEP_ENV: "ablation"}
    for name in chosen:
        overrides = [*set_params, *VARIANTS[name]]
        sweep.dvc(
            "exp",
            "run",
            "--queue",
            "-f",
            "-n",
            f"abl-{name}",
            *[a for o in overrides for a in ("-S", o)],
            env=env,
        )
    sweep.dvc("queue", "start", "-j", str(jobs), env=env)
    sweep.wait_for_queue(jobs, env)


def tabulate(chosen: list[str], ids: dict[str, str]) -> str:
    import mlflow

    connect(require=True)
    client = mlflow.MlflowClient()
    rows = []
    for name in chosen:
        run_id = ids.get(f"abl-{name}")
        metrics = client.get_run(run_id).data.metrics if run_id else {}
        rows.append([name, *(metrics.get(c) for c in COLUMNS)])
    return compare.markdown(["variant", *COLUMNS], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-j", type=int, default=1)
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        help="applied to every variant, e.g. train.epochs=10 for a quick look",
    )
    parser.add_argument("--report", action="store_true", help="tabulate, run nothing")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    if not args.report:
        run_variants(chosen, args.set_param, args.jobs)
    run_file = Artifacts.of(load_params()).train_run
    ids = sweep.experiment_run_ids([f"abl-{name}" for name in chosen], run_file)
    table = tabulate(chosen, ids)
    write_text(REPORTS / "ablation.md", table)
    print(table)


if __name__ == "__main__":
    main()
