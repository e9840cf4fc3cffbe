"""Evaluate-stage cost: importance-sampled NLL time against k and test-set size.

    python bench/evaluate_scaling.py [--ks 10,100,1000] [--sizes 1000,2500,10000]

Uses the trained model in models/model.keras and the prepared test set. The time is
expected to grow linearly in k x images (one decoder pass per sample); the table shows it.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="10,100,1000")
    parser.add_argument("--sizes", default="1000,2500,10000")
    args = parser.parse_args()

    from vaelab.core.params import load_params
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepared import model_data
    from vaelab.evaluation.likelihood import estimate
    from vaelab.model.io import load_vae

    paths = Artifacts.of(params := load_params())
    vae = load_vae(paths.model)
    x, _ = model_data(paths, "test")
    estimate(vae, x[:100], 10, progress=False)  # trace once
    print(f"{'k':>6} {'images':>7} {'seconds':>8} {'us per image-sample':>20} {'NLL':>8}")
    for k in (int(v) for v in args.ks.split(",")):
        for n in (int(v) for v in args.sizes.split(",")):
            start = time.perf_counter()
            nll = estimate(
                vae, x[:n], k, params.evaluate.batch_size, params.evaluate.chunk, progress=False
            ).nll.mean()
            seconds = time.perf_counter() - start
            print(f"{k:>6} {n:>7} {seconds:8.1f} {1e6 * seconds / (k * n):20.2f} {nll:8.2f}")


if __name__ == "__main__":
    main()
