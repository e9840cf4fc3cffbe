"""The test digits the served model finds least likely, next to typical ones: score all test
images (the evaluate stage's binarized draw) through a running `vaelab serve` and draw the
20 with the highest NLL over 20 around the median.

python scripts/least_likely.py [--url http://127.0.0.1:5001] [--out docs/figures/least_likely.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from vaelab.core.mnist import PIXELS
from vaelab.core.params import load_params
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import load_prepared, model_data
from vaelab.report.plots import save_figure
from vaelab.serving.client import Client

SHOWN = 20


def figure(images: np.ndarray, nll: np.ndarray, least: np.ndarray, typical: np.ndarray):
    fig, axes = plt.subplots(4, SHOWN // 2, figsize=(12, 6.2))
    for row, (picked, what) in enumerate([(least, "least likely"), (typical, "typical")]):
        for i, index in enumerate(picked):
            ax = axes[2 * row + i // (SHOWN // 2), i % (SHOWN // 2)]
            ax.imshow(images[index, ..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"#{index}: {nll[index]:.0f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[2 * row, 0].set_ylabel(what, fontsize=11)
    fig.suptitle(
        f"Test digits by the model's NLL (nats): the {SHOWN} least likely (top two rows) and "
        f"{SHOWN} around the median ({np.median(nll):.0f}, bottom two rows)"
    )
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5001")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/least_likely.png"))
    args = parser.parse_args()
    paths = Artifacts.of(load_params())
    x, _ = model_data(paths, "test", binary=True)  # the images the evaluate stage scores
    rows = x.reshape(len(x), PIXELS).astype(np.uint8)  # binary: 0/1 keeps the request small
    # one request: the evaluate stage's batches and seeds, so its numbers come back exactly
    scores = Client(args.url, timeout=1800).predict(rows, output="score")
    nll = np.array([s["nll"] for s in scores])
    elbo = np.array([s["neg_elbo"] for s in scores])
    print(f"{len(nll)} test images: mean NLL {nll.mean():.4f}, mean -ELBO {elbo.mean():.4f}")
    order = np.argsort(nll)
    middle = len(order) // 2
    least, typical = order[::-1][:SHOWN], order[middle - SHOWN // 2 : middle + SHOWN // 2]
    images, _ = load_prepared(paths, "test")  # shown in gray, as MNIST is usually seen
    print(f"wrote {save_figure(figure(images, nll, least, typical), args.out)}")


if __name__ == "__main__":
    main()
