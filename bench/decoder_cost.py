"""What an architecture costs on this machine: decoder time per sample, hence the k=5000
evaluation time, and training seconds per epoch.

    python bench/decoder_cost.py [--images 6400]

For each candidate (untrained weights: the cost does not depend on them) it times one decoder
pass over 10,000 latent codes after a warm-up, projects the importance-sampled evaluation of
the 10,000 test images at k = 5000 (5e7 decoder passes), and times two epochs of `fit` on
``--images`` training images (the first, tracing, epoch discarded) scaled to 50,000 images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CANDIDATES = {  # name: train.architecture overrides
    "mlp 512-512 (default)": {"kind": "mlp"},
    "conv 8/16, dense 512 (long)": {"kind": "conv", "filters": [8, 16], "activation": "elu"},
    "conv 16/32, dense 512": {"kind": "conv", "filters": [16, 32], "activation": "elu"},
    "conv 32/64, dense 512": {"kind": "conv", "filters": [32, 64], "activation": "elu"},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6400)
    args = parser.parse_args()

    from vaelab.core.params import load_params
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepared import load_prepared

    x, _ = load_prepared(Artifacts.of(load_params()), "train")
    x = x[: args.images]
    x = (np.random.default_rng(0).random(x.shape, dtype=np.float32) < x).astype("float32")
    print(f"{'architecture':<30} {'us/sample':>10} {'k=5000 eval, min':>17} {'s/epoch':>8}")
    for name, architecture in CANDIDATES.items():
        decode_us, epoch_s = measure(architecture, x)
        minutes = decode_us * EVAL_SAMPLES / 1e6 / 60
        print(f"{name:<30} {decode_us:10.1f} {minutes:17.1f} {epoch_s:8.1f}")


if __name__ == "__main__":
    main()
