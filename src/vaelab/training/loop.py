"""Train the VAE described by params.yaml, tracked in one MLflow run, resumable after a kill.

Resume state (Keras BackupAndRestore, the best checkpoint so far, the per-epoch history and
the MLflow run id) lives under ``base.paths.state`` in a folder keyed by everything that
determines the training, never in a DVC output: `dvc repro` deletes outputs before it
re-runs a stage, and a resumed run must keep its epochs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from vaelab.core.atomic import atomic_write, write_json, write_text
from vaelab.core.backend import use_backend
from vaelab.core.errors import DataFileError, ParamsError
from vaelab.core.params import Params, Train
from vaelab.core.paths import Artifacts, TrainingState, project_root
from vaelab.data.prepared import model_data, read_meta

PACKAGE = Path(__file__).resolve().parents[1]  # src/vaelab


def code_digest(package: Path | None = None) -> str:
    """sha256 of the train stage's code: the files of its code deps in dvc.yaml (the folders
    `dvc repro` re-runs it for), or of the whole package where there is no dvc.yaml."""
    dvc_yaml = project_root() / "dvc.yaml"
    deps = ["src/vaelab"]
    if dvc_yaml.is_file():
        deps = [d for d in yaml.safe_load(dvc_yaml.read_text())["stages"]["train"]["deps"]
                if d.startswith("src/vaelab")]  # fmt: skip
    digest, package = hashlib.sha256(), package or PACKAGE
    for dep in deps:
        top = package / Path(dep).relative_to("src/vaelab")
        for file in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            digest.update(f"{file.relative_to(package)}\0".encode() + file.read_bytes())
    return digest.hexdigest()


def state_dir(params: Params, data_md5: dict[str, str]) -> TrainingState:
    """The resume-state folder of this exact training (params, seed, data and code)."""
    key = json.dumps(
        {
            "train": params.train.model_dump(),
            "augment": params.prepare.augment.model_dump(),
            "seed": params.base.seed,
            "data": data_md5,
            "code": code_digest(),
        },
        sort_keys=True,
    )
    return Artifacts.of(params).training_state(hashlib.sha256(key.encode()).hexdigest()[:16])


def distribution_strategy(enabled: bool, device_type: str = "GPU"):
    """MirroredStrategy over the visible devices of ``device_type`` when ``enabled`` and there
    are several; otherwise TensorFlow's default single-device strategy."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices(device_type)
    if enabled and len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def data_parallel(cfg: Train) -> Iterator[None]:
    """``train.distribute``: each batch split over the visible devices, for the block (the
    model built and fitted in it): Keras' `DataParallel` on JAX, `MirroredStrategy` over the
    GPUs on TensorFlow. One device trains alone, and says so; a batch that does not split
    evenly is refused before any work."""
    import keras

    if keras.backend.backend() == "tensorflow":
        strategy = distribution_strategy(cfg.distribute)
        devices = strategy.num_replicas_in_sync
    else:
        devices = len(keras.distribution.list_devices()) if cfg.distribute else 1
    if cfg.distribute and devices == 1:
        print("train.distribute: one device is visible, so it trains alone")
    if cfg.batch_size % devices:
        raise ParamsError(
            f"train.batch_size={cfg.batch_size} does not split over {devices} devices "
            "(train.distribute): make it a multiple of the number of devices"
        )
    if keras.backend.backend() == "tensorflow":
        with strategy.scope():
            yield
        return
    if devices > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        print(f"train.distribute: each batch split over {devices} devices")
    try:
        yield
    finally:
        keras.distribution.set_distribution(None)


def summarize(rows: list[dict[str, float]], monitor: str) -> dict[str, Any]:
    """Training metrics for DVC: the best epoch's validation numbers, epochs and time."""
    best = min(rows, key=lambda row: row[monitor])
    return {
        "best_epoch": int(best["epoch"]),
        "epochs": int(rows[-1]["epoch"]),
        "train_seconds": round(sum(row["epoch_time"] for row in rows), 1),
        **{key: best[key] for key in best if key.startswith("val_")},
    }


def build_callbacks(
    params: Params, state: TrainingState, history, logger, settled_epoch: int
) -> list:
    """The training callbacks, in the order their epoch-end hooks must run: the history row
    is written before the backup, and MLflow hears of an epoch only once it is backed up.
    Early stopping and the plateau's learning-rate cuts watch from ``settled_epoch`` on (see
    `BetaSchedule.settled_epoch`) at the earliest."""

    from vaelab.training.callbacks import (
        MONITOR,
        Backup,
        BestCheckpoint,
        EpochExtras,
        ResumableEarlyStopping,
        ResumablePlateau,
        StopOnDivergence,
        StopOnSignal,
    )

    cfg = params.train
    best_so_far = min((row[MONITOR] for row in history.rows), default=None)
    callbacks = [StopOnSignal(), EpochExtras(), StopOnDivergence(state.best)]
    if cfg.reduce_on_plateau.enabled:
        rop = cfg.reduce_on_plateau
        callbacks.append(
            ResumablePlateau(
                history,
                start_from_epoch=settled_epoch,
                monitor=MONITOR,
                mode="min",
                factor=rop.factor,
                patience=rop.patience,
                min_lr=rop.min_lr,
            )
        )
    callbacks += [
        BestCheckpoint(state.best, MONITOR, best_so_far),
        history,
        # double_checkpoint: a kill while the backup is written falls back to the one before
        Backup(str(state.backup), double_checkpoint=True),
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
                start_from_epoch=max(es.start_from_epoch, settled_epoch),
                restore_best_weights=True,
            )
        )
    return callbacks


def verified_checkpoint(state: TrainingState) -> bytes:
    """The best checkpoint's bytes, once it has loaded as a VAE (never a damaged DVC output)."""
    from vaelab.model.io import load_vae

    try:
        load_vae(state.best)
    except DataFileError as exc:
        raise DataFileError(
            state.best,
            f"the best checkpoint is damaged ({exc})",
            f"Delete {state.folder} and re-run `dvc repro train` to train from scratch",
        ) from None
    return state.best.read_bytes()


def fit(params: Params, data: tuple, state: TrainingState, run_id: str, history, logger) -> None:
    """Fit (or resume fitting) the VAE on ``data`` (training and validation datasets, steps
    per epoch, the binarization mode); the run is marked KILLED on Ctrl-C or SIGTERM (the
    resume state kept), FAILED on any other error."""
    from vaelab.model.vae import build_vae
    from vaelab.tracking import runs
    from vaelab.training.kl_schedule import BetaSchedule
    from vaelab.training.optim import build_optimizer

    cfg, (train_ds, val_ds, steps_per_epoch, binarize) = params.train, data
    try:
        with data_parallel(cfg), runs.system_metrics(params, run_id):
            model = build_vae(cfg, params.base.seed, binarize=binarize == "dynamic")
            model.beta_schedule = BetaSchedule(cfg.kl, cfg.epochs, steps_per_epoch)
            model.compile(
                optimizer=build_optimizer(cfg, steps_per_epoch),
                steps_per_execution=cfg.steps_per_execution,
            )
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs,
                shuffle=False,
                callbacks=build_callbacks(
                    params, state, history, logger, model.beta_schedule.settled_epoch()
                ),
                verbose=2,
            )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see vaelab.core.cli)
        runs.end_run_quietly(run_id, "KILLED")
        raise
    except BaseException:
        runs.end_run_quietly(run_id, "FAILED")
        raise


def train(params: Params) -> dict[str, Any]:
    """Run (or resume) the training; write the DVC outputs; return the summary metrics.

    Once `fit` has returned, the state says so (`TrainingState.fitted`): a failure while the
    outputs are written is repaired by the next start, which writes them without training.
    """
    use_backend(params.train.backend)  # the params' backend, or a clear error
    import keras

    # Its first import takes draws from the seeded state: it must come before the seed.
    import vaelab.model.vae  # noqa: F401
    from vaelab.serving.log import scoring_config, served_model
    from vaelab.tracking import runs
    from vaelab.tracking.epochs import MlflowEpochLogger
    from vaelab.training.callbacks import MONITOR, EpochHistory
    from vaelab.training.pipeline import evaluation_dataset, training_dataset

    cfg, seed, paths = params.train, params.base.seed, Artifacts.of(params)
    keras.utils.set_random_seed(seed)
    meta = read_meta(paths)
    x_train, _ = model_data(paths, "train", fixed_draw=False)
    x_val, _ = model_data(paths, "val")
    data = (
        training_dataset(x_train, cfg.batch_size, seed, params.prepare.augment, meta["binarize"]),
        evaluation_dataset(x_val, cfg.batch_size),
        math.ceil(len(x_train) / cfg.batch_size),
        meta["binarize"],
    )
    state = state_dir(params, meta["md5"])
    run_id = runs.start_training_run(params, meta, state.run_id)
    history = EpochHistory(state.history)
    logger = MlflowEpochLogger(history, run_id, runs.last_logged_epoch(run_id))
    if state.fitted.exists():
        print(f"the training finished before its outputs were written: writing them ({state})")
    else:
        if not state.backup.exists():  # fit starts at epoch 0: nothing before is this run's
            history.rows.clear()
            state.best.unlink(missing_ok=True)
        fit(params, data, state, run_id, history, logger)
        write_text(state.fitted, "fit returned; outputs pending\n")

    summary = summarize(history.rows, MONITOR)
    with atomic_write(paths.model) as handle:
        handle.write(verified_checkpoint(state))
    write_text(paths.train_history, state.history.read_text())
    write_json(paths.train_metrics, summary)
    write_json(paths.train_run, {"run_id": run_id, "experiment": params.base.experiment})
    served = served_model(paths.model, scoring_config(params))
    runs.finish_training_run(params, run_id, summary, logger.pending(), served)
    shutil.rmtree(state.folder)
    return summary
