"""Train the VAE described by params.yaml, tracked in one MLflow run, resumable after a kill.

Resume state (Keras BackupAndRestore, the best checkpoint so far, the per-epoch history and
the MLflow run id) lives under ``base.paths.state`` in a folder keyed by everything that
determines the training, never in a DVC output: `dvc repro` deletes outputs before it
re-runs a stage, and a resumed run must keep its epochs.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

from vaelab.atomic import atomic_write, write_json, write_text
from vaelab.errors import TrainingDiverged
from vaelab.params import Params
from vaelab.prepare import model_data, read_meta

BEST = "best.keras"


def state_dir(params: Params, data_md5: dict[str, str]) -> Path:
    """The resume-state folder of this exact training (params, seed and data)."""
    key = json.dumps(
        {
            "train": params.train.model_dump(),
            "augment": params.prepare.augment.model_dump(),
            "seed": params.base.seed,
            "data": data_md5,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(params.base.paths.state) / f"train-{digest}"


def output_paths(params: Params) -> dict[str, Path]:
    results = Path(params.base.paths.results) / "train"
    return {
        "model": Path(params.base.paths.models) / "model.keras",
        "history": results / "history.csv",
        "metrics": results / "metrics.json",
        "run": results / "run.json",
    }


def summarize(rows: list[dict[str, float]], monitor: str) -> dict[str, Any]:
    """Training metrics for DVC: the best epoch's validation numbers, epochs and time."""
    best = min(rows, key=lambda row: row[monitor])
    return {
        "best_epoch": int(best["epoch"]),
        "epochs": int(rows[-1]["epoch"]),
        "train_seconds": round(sum(row["epoch_time"] for row in rows), 1),
        **{key: round(best[key], 4) for key in best if key.startswith("val_")},
    }


def build_callbacks(params: Params, state: Path, history, logger) -> list:
    """The training callbacks, in the order their epoch-end hooks must run: the history row
    is written before the backup, and MLflow hears of an epoch only once it is backed up."""
    import keras

    from vaelab.callbacks import MONITOR, EpochExtras, ResumableEarlyStopping

    cfg = params.train
    best_so_far = min((row[MONITOR] for row in history.rows), default=None)
    callbacks = [EpochExtras(), keras.callbacks.TerminateOnNaN(raise_error=True)]
    if cfg.reduce_on_plateau.enabled:
        rop = cfg.reduce_on_plateau
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR,
                mode="min",
                factor=rop.factor,
                patience=rop.patience,
                min_lr=rop.min_lr,
            )
        )
    callbacks += [
        keras.callbacks.ModelCheckpoint(
            state / BEST,
            monitor=MONITOR,
            mode="min",
            save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        history,
        # double_checkpoint: a kill while the backup is written falls back to the one before
        keras.callbacks.BackupAndRestore(str(state / "backup"), double_checkpoint=True),
        logger,
    ]
    if cfg.early_stopping.enabled:
        es = cfg.early_stopping
        callbacks.append(
            ResumableEarlyStopping(
                history,
                monitor=MONITOR,
                mode="min",
                patience=es.patience,
                min_delta=es.min_delta,
                start_from_epoch=es.start_from_epoch,
                restore_best_weights=True,
            )
        )
    return callbacks


def train(params: Params) -> dict[str, Any]:
    """Run (or resume) the training; write the DVC outputs; return the summary metrics."""
    import keras

    from vaelab import tracking
    from vaelab.callbacks import MONITOR, EpochHistory, MlflowEpochLogger
    from vaelab.input_pipeline import evaluation_dataset, training_dataset
    from vaelab.kl_schedule import BetaSchedule
    from vaelab.model import build_vae, distribution_strategy
    from vaelab.optim import build_optimizer
    from vaelab.outbox import Delivery, deliver

    cfg, seed = params.train, params.base.seed
    keras.utils.set_random_seed(seed)

    prepared = params.base.paths.prepared
    meta = read_meta(prepared)
    x_train, _ = model_data(prepared, "train", fixed_draw=False)
    x_val, _ = model_data(prepared, "val")
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    train_ds = training_dataset(
        x_train, cfg.batch_size, seed, params.prepare.augment, meta["binarize"]
    )
    val_ds = evaluation_dataset(x_val, cfg.batch_size)

    state = state_dir(params, meta["md5"])
    run_id = tracking.start_training_run(params, meta["md5"], state / "mlflow_run_id")
    history = EpochHistory(state / "history.csv")
    logger = MlflowEpochLogger(history, run_id, tracking.last_logged_epoch(run_id))
    try:
        with distribution_strategy(cfg.distribute).scope():
            model = build_vae(cfg, seed)
            model.beta_schedule = BetaSchedule(cfg.kl, cfg.epochs, steps_per_epoch)
            model.compile(optimizer=build_optimizer(cfg, steps_per_epoch))
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            shuffle=False,
            callbacks=build_callbacks(params, state, history, logger),
            verbose=2,
        )
    except BaseException as exc:
        tracking.end_run_quietly(run_id, "FAILED")
        if isinstance(exc, RuntimeError) and "NaN or Inf loss" in str(exc):
            raise TrainingDiverged(
                f"training diverged: {exc} The best model so far is kept in {state / BEST}. "
                "Lower train.optimizer.learning_rate (or set train.optimizer.clipnorm) and "
                "re-run."
            ) from None
        raise

    summary = summarize(history.rows, MONITOR)
    out = output_paths(params)
    with atomic_write(out["model"]) as handle:
        handle.write((state / BEST).read_bytes())
    write_text(out["history"], (state / "history.csv").read_text())
    write_json(out["metrics"], summary)
    write_json(out["run"], {"run_id": run_id, "experiment": params.base.experiment})
    deliver(
        Delivery(
            run_id,
            metrics={f"best_{k}": v for k, v in summary.items()},
            rows=logger.pending(),
            artifacts=[(str(out["history"]), "train"), (str(out["model"]), "train")],
            model=str(out["model"]),
            status="FINISHED",
        )
    )
    shutil.rmtree(state)
    return summary
