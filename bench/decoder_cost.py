"""What an architecture costs on this machine, and what it buys: decoder time per sample,
hence the k=5000 evaluation time, training seconds per epoch, and with ``--screen`` the
validation -ELBO after a short training run.

    python bench/decoder_cost.py [--images 6400] [--screen EPOCHS]

For each candidate (untrained weights: the cost does not depend on them) it times one decoder
pass over 10,000 latent codes after a warm-up, projects the importance-sampled evaluation of
the 10,000 test images at k = 5000 (5e7 decoder passes), and times two epochs of `fit` on
``--images`` training images (the first, tracing, epoch discarded) scaled to 50,000 images.
``--screen`` then trains each candidate on the whole training set for EPOCHS epochs (the
default profile's settings otherwise, cosine decay over EPOCHS, seed 1) and reports the
one-sample -ELBO on the validation set, statically binarized, after 5, 10 and EPOCHS epochs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHUFFLE = {"upsample": "pixel_shuffle"}
CANDIDATES = {  # name: train.architecture overrides (dense 512 and swish: the defaults)
    "mlp 512-512 (default)": {"kind": "mlp"},
    "conv 8/16": {"kind": "conv", "filters": [8, 16]},
    "conv 8/16, pixel shuffle": {"kind": "conv", "filters": [8, 16], **SHUFFLE},
    "conv 16/32": {"kind": "conv", "filters": [16, 32]},
    "conv 16/32, pixel shuffle (long)": {"kind": "conv", "filters": [16, 32], **SHUFFLE},
    "conv 32/64": {"kind": "conv", "filters": [32, 64]},
}
EVAL_SAMPLES = 5000 * 10_000


def measure(architecture: dict, x: np.ndarray) -> tuple[float, float]:
    """(microseconds per decoded sample, seconds per 50,000-image epoch)."""
    from vaelab.core.params import load_params
    from vaelab.model.vae import build_vae
    from vaelab.training.optim import build_optimizer

    params = load_params().replace({"train": {"architecture": architecture}})
    vae = build_vae(params.train, seed=0)
    z = np.random.default_rng(0).standard_normal((10_000, params.train.architecture.latent_dim))
    z = z.astype("float32")
    vae.decoder(z, training=False)
    start = time.perf_counter()
    vae.decoder(z, training=False)
    decode_us = 1e6 * (time.perf_counter() - start) / len(z)

    from timing import EpochTimer

    vae.compile(optimizer=build_optimizer(params.train, steps_per_epoch=len(x) // 128))
    timer = EpochTimer()
    vae.fit(x, epochs=2, batch_size=128, verbose=0, callbacks=[timer])
    return decode_us, timer.times[-1] * 50_000 / len(x)


def screen(architecture: dict, epochs: int, x: np.ndarray, x_val: np.ndarray) -> list[float]:
    """Validation -ELBO after each of ``epochs`` epochs on the whole training set."""
    import keras

    from vaelab.core.params import load_params
    from vaelab.model.vae import build_vae
    from vaelab.training.optim import build_optimizer
    from vaelab.training.pipeline import evaluation_dataset, training_dataset

    params = load_params().replace({"train": {"epochs": epochs, "architecture": architecture}})
    keras.utils.set_random_seed(1)
    vae = build_vae(params.train, seed=1)
    steps = -(-len(x) // params.train.batch_size)
    vae.compile(optimizer=build_optimizer(params.train, steps), steps_per_execution=16)
    ds = training_dataset(x, params.train.batch_size, 1, params.prepare.augment, "dynamic")
    history = vae.fit(ds, epochs=epochs, validation_data=evaluation_dataset(x_val, 500), verbose=0)
    return history.history["val_neg_elbo"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--screen", type=int, metavar="EPOCHS")
    args = parser.parse_args()

    from vaelab.core.params import load_params
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepared import load_prepared

    artifacts = Artifacts.of(load_params())
    x, _ = load_prepared(artifacts, "train")
    sample = x[: args.images]
    sample = (np.random.default_rng(0).random(sample.shape, dtype=np.float32) < sample).astype(
        "float32"
    )
    print(f"{'architecture':<34} {'us/sample':>10} {'k=5000 eval, min':>17} {'s/epoch':>8}")
    for name, architecture in CANDIDATES.items():
        decode_us, epoch_s = measure(architecture, sample)
        minutes = decode_us * EVAL_SAMPLES / 1e6 / 60
        print(f"{name:<34} {decode_us:10.1f} {minutes:17.1f} {epoch_s:8.1f}", flush=True)
    if args.screen:
        x_val, _ = load_prepared(artifacts, "val")
        x_val = (np.random.default_rng(1).random(x_val.shape, dtype=np.float32) < x_val).astype(
            "float32"
        )
        marks = sorted({5, 10, args.screen} & set(range(1, args.screen + 1)))
        print(f"\nvalidation -ELBO (nats) after {', '.join(map(str, marks))} epochs")
        for name, architecture in CANDIDATES.items():
            losses = screen(architecture, args.screen, x, x_val)
            print(f"{name:<34} " + " ".join(f"{losses[m - 1]:8.2f}" for m in marks), flush=True)


if __name__ == "__main__":
    main()
