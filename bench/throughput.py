"""Training throughput of the train stage vs a bare Keras loop, same model, batch and machine.

    python bench/throughput.py [--images 20000] [--epochs 4]

The stage is measured through `vaelab.training.loop.train` itself (tf.data pipeline with shuffling
and dynamic binarization, KL schedule, checkpoints, BackupAndRestore, history, MLflow
logging, and a validation pass of 5% of the images inside each timed epoch); the bare loop
is `model.fit` on the same images as NumPy arrays. The two alternate for ``--rounds`` rounds
and the medians are compared; the first epoch of each (tracing) is discarded. Prints
images/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def stage_throughput(params, workdir: Path) -> float:
    from vaelab.core.paths import Artifacts
    from vaelab.training.history import read_history
    from vaelab.training.loop import train

    os.chdir(workdir)
    train(params)
    rows = read_history(Artifacts.of(params).train_history)[1:]
    return params.prepare.train_size * len(rows) / sum(r["epoch_time"] for r in rows)


class _EpochTimer:
    def __init__(self) -> None:
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(inner, epoch, logs=None):
                inner.started = time.perf_counter()

            def on_epoch_end(inner, epoch, logs=None):
                self.times.append(time.perf_counter() - inner.started)

        self.times: list[float] = []
        self.callback = Timer()


def bare_throughput(params, x: np.ndarray) -> float:
    """Plain ``model.fit`` on in-memory arrays (Keras shuffles them each epoch), statically
    binarized once, no validation, no callbacks but a timer."""
    from vaelab.model.vae import build_vae
    from vaelab.training.optim import build_optimizer

    cfg = params.train
    vae = build_vae(cfg, params.base.seed)
    vae.compile(optimizer=build_optimizer(cfg, steps_per_epoch=len(x) // cfg.batch_size))
    binary = (np.random.default_rng(0).random(x.shape, dtype=np.float32) < x).astype("float32")
    timer = _EpochTimer()
    vae.fit(
        binary,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[timer.callback],
    )
    return len(x) * (len(timer.times) - 1) / sum(timer.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    from vaelab.core.params import load_params
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepare import prepare
    from vaelab.data.prepared import load_prepared

    root = Path(args.params).resolve().parent
    base = load_params(args.params)
    val = max(100, args.images // 20)
    params = base.replace(
        {
            "base": {"paths": {"raw": str(root / base.base.paths.raw)}},
            "prepare": {"subset": args.images + val, "val_size": val},
            "train": {"epochs": args.epochs, "early_stopping": {"enabled": False}},
        }
    )
    paths = Artifacts.of(params)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chdir(work)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        prepare(paths, params.prepare, params.base.seed)
        x, _ = load_prepared(paths, "train")
        bare, stage = [], []
        for _ in range(args.rounds):
            bare.append(bare_throughput(params, x))
            stage.append(stage_throughput(params, work))
            shutil.rmtree(work / paths.results)
        bare, stage = float(np.median(bare)), float(np.median(stage))
    arch = params.train.architecture
    print(
        f"model: {arch.kind} {arch.hidden if arch.kind == 'mlp' else arch.filters} "
        f"z={arch.latent_dim}, batch {params.train.batch_size}, {args.images} images, "
        f"{args.epochs} epochs (first discarded), {os.cpu_count()} CPUs"
    )
    print(f"bare Keras loop : {bare:9.0f} images/s")
    print(f"train stage     : {stage:9.0f} images/s (validation pass and callbacks included)")
    print(f"ratio stage/bare: {stage / bare:.3f}")


if __name__ == "__main__":
    main()
