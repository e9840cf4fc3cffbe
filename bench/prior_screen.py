"""Does a learned prior buy likelihood on the default MLP? A short screening, one seed.

    python bench/prior_screen.py [--epochs 30] [--test 2000] [--variants std-fb mog-64 ...]

Each variant trains the default profile (Keras on JAX, dynamic binarization, Adam 3e-3 with
cosine decay over ``--epochs``) with one prior and KL treatment, then reports the validation
-ELBO and the test NLL (k = 1000, the first ``--test`` test images, the prior's own log p(z)).
The mixture prior is a K-component diagonal Gaussian mixture with learned weights, means and
variances; its KL term is the one-sample estimate log q(z|x) - log p(z).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

VARIANTS = {  # name: (mixture components, 0 = N(0, I); free bits; KL schedule)
    "std-fb": (0, 0.25, "constant"),
    "std": (0, 0.0, "constant"),
    "mog-64": (64, 0.0, "constant"),
    "mog-64-warm": (64, 0.0, "linear"),
    "mog-500": (500, 0.0, "constant"),
}
_LOG_2PI = math.log(2 * math.pi)


def mixture_vae(vae_cls, components: int, dim: int):
    import keras
    from keras import ops

    from vaelab.model.losses import reconstruction_nll

    class MixtureVAE(vae_cls):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            init = keras.initializers.RandomNormal(stddev=1.0, seed=3)
            self.prior_means = self.add_weight((components, dim), init, name="prior_means")
            self.prior_log_vars = self.add_weight((components, dim), "zeros", name="prior_lv")
            self.prior_logits = self.add_weight((components,), "zeros", name="prior_logits")

        def log_prior(self, z):
            diff = z[..., None, :] - self.prior_means
            comp = -0.5 * ops.sum(
                ops.square(diff) * ops.exp(-self.prior_log_vars) + self.prior_log_vars + _LOG_2PI,
                axis=-1,
            )
            return ops.logsumexp(comp + ops.log_softmax(self.prior_logits), axis=-1)

        def loss_parts(self, x, training: bool = False) -> dict:
            if training:
                x = self.training_inputs(x)
            z_mean, z_log_var = self.encoder(x, training=training)
            eps = keras.random.normal(ops.shape(z_mean), seed=self.sampling.seed_generator)
            z = z_mean + ops.exp(0.5 * z_log_var) * eps
            recon = ops.mean(reconstruction_nll(x, self.decoder(z, training=training)))
            log_q = -0.5 * ops.sum(ops.square(eps) + _LOG_2PI + z_log_var, axis=-1)
            kl = ops.mean(log_q - self.log_prior(z))
            return {
                "loss": recon + self.beta * kl,
                "objective": recon + kl,
                "reconstruction": recon,
                "kl": kl,
                "neg_elbo": recon + kl,
            }

    return MixtureVAE


def nll(vae, x: np.ndarray, k: int = 1000, batch: int = 100, chunk: int = 100) -> float:
    """Mean IWAE -log p(x) with the model's own prior."""
    from keras import ops

    from vaelab.evaluation.likelihood import compiled
    from vaelab.model.losses import reconstruction_nll

    log_prior = getattr(vae, "log_prior", lambda z: -0.5 * ops.sum(ops.square(z) + _LOG_2PI, -1))

    def step(xb, eps):
        z_mean, z_log_var = vae.encoder(xb, training=False)
        z = z_mean[None] + ops.exp(0.5 * z_log_var)[None] * eps
        logits = vae.decoder(ops.reshape(z, (-1, z.shape[-1])), training=False)
        targets = ops.reshape(ops.tile(xb[None], (chunk, 1, 1, 1, 1)), (-1, *xb.shape[1:]))
        log_px = -ops.reshape(reconstruction_nll(targets, logits), (chunk, -1))
        log_q = -0.5 * ops.sum(ops.square(eps) + _LOG_2PI + z_log_var[None], axis=-1)
        return ops.logsumexp(log_px + log_prior(z) - log_q, axis=0)

    step = compiled(step)
    dim = int(vae.encoder.outputs[0].shape[-1])
    rng = np.random.default_rng(0)
    total = []
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        parts = [
            np.asarray(step(xb, rng.standard_normal((chunk, len(xb), dim), np.float32)))
            for _ in range(k // chunk)
        ]
        total.append(math.log(k) - np.logaddexp.reduce(np.stack(parts), axis=0))
    return float(np.concatenate(total).mean())


def run(name: str, epochs: int, x, x_val, x_test) -> tuple[float, float, float]:
    import keras

    from vaelab.core.params import load_params
    from vaelab.model.vae import VAE, build_decoder, build_encoder
    from vaelab.training.kl_schedule import BetaSchedule
    from vaelab.training.optim import build_optimizer

    components, free_bits, schedule = VARIANTS[name]
    params = load_params().replace(
        {"train": {"epochs": epochs, "kl": {"free_bits": free_bits, "schedule": schedule}}}
    )
    cfg, seed = params.train, 1
    keras.utils.set_random_seed(seed)
    cls = mixture_vae(VAE, components, cfg.architecture.latent_dim) if components else VAE
    vae = cls(
        build_encoder(cfg.architecture),
        build_decoder(cfg.architecture),
        free_bits=free_bits,
        seed=seed,
        binarize=True,
    )
    vae(np.zeros((1, 28, 28, 1), "float32"))
    steps = -(-len(x) // cfg.batch_size)
    vae.beta_schedule = BetaSchedule(cfg.kl, epochs, steps)
    vae.compile(optimizer=build_optimizer(cfg, steps), steps_per_execution=16)
    start = time.perf_counter()
    history = vae.fit(
        x, batch_size=cfg.batch_size, epochs=epochs, validation_data=(x_val,), verbose=0
    )
    seconds = time.perf_counter() - start
    return history.history["val_neg_elbo"][-1], nll(vae, x_test), seconds


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
    x, _ = model_data(paths, "train", fixed_draw=False)
    x_val, _ = model_data(paths, "val")
    x_test, _ = model_data(paths, "test")
    print(f"{'variant':<14} {'val -ELBO':>10} {'test NLL':>9} {'train s':>8}", flush=True)
    for name in args.variants:
        elbo, test_nll, seconds = run(name, args.epochs, x, x_val, x_test[: args.test])
        print(f"{name:<14} {elbo:10.2f} {test_nll:9.2f} {seconds:8.0f}", flush=True)


if __name__ == "__main__":
    main()
