"""Does a learned prior buy likelihood on the default MLP? A short screening, one seed.

    python bench/prior_screen.py [--epochs 30] [--test 2000] [--variants NAME ...]

Each variant is the default profile (params.yaml, Keras on JAX, dynamic binarization drawn in
the train step, Adam with cosine decay over ``--epochs``) with one prior and KL treatment: a
bare `fit` at seed 1, then the validation -ELBO and the test NLL (k = 1000, the first
``--test`` test images, the evaluate stage's estimator under the model's own prior).
"""

from __future__ import annotations

import argparse
import time

MIXTURE = {"kind": "mixture", "components": 64}
STANDARD = {"kind": "standard"}
VARIANTS = {  # name: train-section overrides of params.yaml
    "N(0, I), free bits": {"prior": STANDARD, "kl": {"free_bits": 0.25, "schedule": "constant"}},
    "N(0, I), warm-up": {"prior": STANDARD, "kl": {"free_bits": 0.0, "schedule": "linear"}},
    "mixture 64": {"prior": MIXTURE, "kl": {"free_bits": 0.0, "schedule": "constant"}},
    "mixture 64, warm-up": {"prior": MIXTURE, "kl": {"free_bits": 0.0, "schedule": "linear"}},
    "mixture 500, warm-up": {
        "prior": {**MIXTURE, "components": 500},
        "kl": {"free_bits": 0.0, "schedule": "linear"},
    },
}


def run(overrides: dict, epochs: int, data: tuple) -> tuple[float, float, float]:
    """(validation -ELBO, test NLL, training seconds) of one variant."""
    import keras

    from vaelab.core.params import load_params
    from vaelab.evaluation.likelihood import estimate
    from vaelab.model.vae import build_vae
    from vaelab.training.kl_schedule import BetaSchedule
    from vaelab.training.optim import build_optimizer

    x, x_val, x_test = data
    params = load_params().replace({"train": {"epochs": epochs, **overrides}})
    cfg, seed = params.train, 1
    keras.utils.set_random_seed(seed)
    vae = build_vae(cfg, seed, binarize=True)
    steps = -(-len(x) // cfg.batch_size)
    vae.beta_schedule = BetaSchedule(cfg.kl, epochs, steps)
    vae.compile(optimizer=build_optimizer(cfg, steps), steps_per_execution=16)
    start = time.perf_counter()
    fit = vae.fit(x, batch_size=cfg.batch_size, epochs=epochs, validation_data=(x_val,), verbose=0)
    seconds = time.perf_counter() - start
    nll = estimate(vae, x_test, 1000, seed=seed, progress=False).nll.mean()
    return fit.history["val_neg_elbo"][-1], float(nll), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    from vaelab.core.backend import use_backend

    use_backend("jax")
    from vaelab.core.params import load_params
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepared import model_data

    paths = Artifacts.of(load_params())
    data = (
        model_data(paths, "train", fixed_draw=False)[0],
        model_data(paths, "val")[0],
        model_data(paths, "test")[0][: args.test],
    )
    print(f"{'variant':<22} {'val -ELBO':>10} {'test NLL':>9} {'train s':>8}", flush=True)
    for name in args.variants:
        elbo, nll, seconds = run(VARIANTS[name], args.epochs, data)
        print(f"{name:<22} {elbo:10.2f} {nll:9.2f} {seconds:8.0f}", flush=True)


if __name__ == "__main__":
    main()
