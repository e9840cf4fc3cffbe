"""A Keras 3 VAE from serializable pieces: encoder -> (mean, log-variance), Sampling, decoder,
and a prior (N(0, I), or a learned `MixturePrior`).

The encoder and decoder are functional models of built-in layers; `Sampling`, `MixturePrior`
and `VAE` are registered, so a saved ``.keras`` file reloads in safe mode once
``vaelab.model.vae`` is imported.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from vaelab.core.mnist import IMAGE_SHAPE, PIXELS
from vaelab.core.params import Architecture, Train
from vaelab.model.losses import kl_per_dim, vae_loss
from vaelab.model.prior import MixturePrior, normal_log_density, standard_normal_log_prob


@keras.saving.register_keras_serializable(package="vaelab")
class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I): the reparameterisation trick."""

    def __init__(self, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights to create

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="vaelab")
class DepthToSpace(layers.Layer):
    """Rearranges ``block**2`` channels per pixel into a ``block x block`` patch."""

    def __init__(self, block: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.block = block
        self.built = True

    def call(self, inputs):
        return ops.depth_to_space(inputs, self.block, data_format="channels_last")

    def get_config(self) -> dict:
        return {**super().get_config(), "block": self.block}


def _block(x, layer: layers.Layer, arch: Architecture):
    x = layer(x)
    if arch.batch_norm:
        x = layers.BatchNormalization()(x)
    return layers.Activation(arch.activation)(x)


def build_encoder(arch: Architecture) -> keras.Model:
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    # The data is stored in [0, 1]; scaling it back is exactly feeding raw pixel values.
    x = inputs if arch.normalize_inputs else layers.Rescaling(255.0, name="raw_pixels")(inputs)
    if arch.kind == "mlp":
        x = layers.Flatten()(x)
        for units in arch.hidden:
            x = _block(x, layers.Dense(units), arch)
    else:
        for filters in arch.filters:
            x = _block(x, layers.Conv2D(filters, 3, strides=2, padding="same"), arch)
        x = layers.Flatten()(x)
        if arch.dense:
            x = _block(x, layers.Dense(arch.dense), arch)
    z_mean = layers.Dense(arch.latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(arch.latent_dim, name="z_log_var")(x)
    return keras.Model(inputs, [z_mean, z_log_var], name="encoder")


def build_decoder(arch: Architecture) -> keras.Model:
    """Maps z to per-pixel logits of MNIST's image shape."""
    inputs = keras.Input((arch.latent_dim,), name="z")
    x = inputs
    if arch.kind == "mlp":
        for units in reversed(arch.hidden):
            x = _block(x, layers.Dense(units), arch)
        x = layers.Dense(PIXELS)(x)
        logits = layers.Reshape(IMAGE_SHAPE, name="logits")(x)
    else:
        side = IMAGE_SHAPE[0] // 2 ** len(arch.filters)
        if arch.dense:
            x = _block(x, layers.Dense(arch.dense), arch)
        x = _block(x, layers.Dense(side * side * arch.filters[-1]), arch)
        x = layers.Reshape((side, side, arch.filters[-1]))(x)
        shuffle = arch.upsample == "pixel_shuffle"
        stages = list(reversed(arch.filters))[: -1 if shuffle else None]
        for filters in stages:
            x = _block(x, layers.Conv2DTranspose(filters, 3, strides=2, padding="same"), arch)
        if shuffle:  # 4 logits per pixel of the 14x14 map, one for each of its 2x2 patch
            x = layers.Conv2D(4, 3, padding="same")(x)
            logits = DepthToSpace(2, name="logits")(x)
        else:
            logits = layers.Conv2D(1, 3, padding="same", name="logits")(x)
    return keras.Model(inputs, logits, name="decoder")


def _replicas() -> int:
    """Replicas a tf.distribute strategy splits each batch over (their gradients are summed)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _index(variables: list, variable) -> int:
    return next(i for i, v in enumerate(variables) if v is variable)


@keras.saving.register_keras_serializable(package="vaelab")
class VAE(keras.Model):
    """Trains on the loss parts of `vaelab.model.losses.vae_loss`; ``call`` reconstructs
    E[x|z_mean].

    ``beta`` is a non-trainable variable holding the KL weight of the current step. With a
    ``beta_schedule`` (a function of the optimizer's step count, see `vaelab.training.kl_schedule`)
    the train step sets it before computing the loss; otherwise it stays as assigned.
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder: keras.Model,
        likelihood: str = "bernoulli",
        sigma: float = 1.0,
        free_bits: float = 0.0,
        target_beta: float = 1.0,
        seed: int | None = None,
        binarize: bool = False,
        prior: MixturePrior | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior  # None: N(0, I), as in models saved before the key existed
        self.likelihood = likelihood
        self.sigma = sigma
        self.free_bits = free_bits
        self.target_beta = target_beta
        self.seed = seed
        self.binarize = binarize
        if binarize:  # a state of its own: models saved without it load unchanged
            self.binarizer = keras.random.SeedGenerator(None if seed is None else seed + 6)
        self.sampling = Sampling(seed=seed, name="sampling")
        self.beta_schedule = None  # training configuration, not part of the saved model
        self.beta = self.add_weight(shape=(), initializer="ones", trainable=False, name="beta")
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "objective", "reconstruction", "kl", "neg_elbo")
        }

    @property
    def metrics(self) -> list:
        return list(self.trackers.values())

    def call(self, inputs, training: bool = False):
        z_mean, _ = self.encoder(inputs, training=training)
        return ops.sigmoid(self.decoder(z_mean, training=training))

    def training_inputs(self, x):
        """Batch ``x`` as a training step sees it: with ``binarize``, a fresh Bernoulli draw
        per pixel (p = intensity) at every step, on every backend (inside the compiled step)."""
        if not self.binarize:
            return x
        return ops.cast(keras.random.uniform(ops.shape(x), seed=self.binarizer) < x, x.dtype)

    def log_prior(self, z):
        """log p(z) for z [..., latent_dim]."""
        return standard_normal_log_prob(z) if self.prior is None else self.prior.log_prob(z)

    def kl_parts(self, z_mean, z_log_var, z):
        """KL(q(z|x) || p(z)) per example, and split over latent dimensions. N(0, I): closed
        form (``z`` unused). A learned prior: one-sample estimates at ``z`` [..., batch, dim],
        the total log q(z|x) - log p(z) and, per dimension, against the prior's marginal in
        that dimension (these need not add up to the total)."""
        if self.prior is None:
            dims = kl_per_dim(z_mean, z_log_var)
            return ops.sum(dims, axis=-1), dims
        log_q = normal_log_density(z, z_mean, z_log_var)
        kl = ops.sum(log_q, axis=-1) - self.prior.log_prob(z)
        return kl, log_q - self.prior.marginal_log_probs(z)

    def loss_parts(self, x, training: bool = False) -> dict:
        """One-sample estimates of the loss parts on batch ``x`` (targets are ``x``, drawn
        anew first when training with ``binarize``)."""
        if training:
            x = self.training_inputs(x)
        z_mean, z_log_var = self.encoder(x, training=training)
        z = self.sampling([z_mean, z_log_var])
        logits = self.decoder(z, training=training)
        return vae_loss(
            x,
            logits,
            *self.kl_parts(z_mean, z_log_var, z),
            self.beta,
            self.likelihood,
            self.sigma,
            self.free_bits,
            self.target_beta,
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The loss of batch ``x``, for every backend's own train and test step: the parts are
        computed here from one sampled z (``y_pred``, the reconstruction, goes unused, and the
        compiled step drops it) and recorded in the trackers."""
        if training and self.beta_schedule is not None and keras.backend.backend() != "jax":
            self.beta.assign(self.beta_schedule(self.optimizer.iterations))
        parts = self.loss_parts(x, training=training)
        for name, tracker in self.trackers.items():
            tracker.update_state(parts[name])
        return parts["loss"] / _replicas()

    def compute_metrics(self, x, y, y_pred, sample_weight=None) -> dict:
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, *args):
        """The backend's own step; on JAX, which passes the state explicitly, the KL weight is
        first set from the optimizer's step count in that state."""
        if keras.backend.backend() != "jax" or self.beta_schedule is None:
            return super().train_step(*args)
        (trainable, non_trainable, optimizer_vars, metrics_vars), data = args
        iterations = optimizer_vars[_index(self.optimizer.variables, self.optimizer.iterations)]
        non_trainable = list(non_trainable)
        non_trainable[_index(self.non_trainable_variables, self.beta)] = ops.cast(
            self.beta_schedule(iterations), self.beta.dtype
        )
        return super().train_step((trainable, non_trainable, optimizer_vars, metrics_vars), data)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "likelihood": self.likelihood,
            "sigma": self.sigma,
            "free_bits": self.free_bits,
            "target_beta": self.target_beta,
            "seed": self.seed,
            "binarize": self.binarize,
            "prior": None
            if self.prior is None
            else keras.saving.serialize_keras_object(self.prior),
        }

    @classmethod
    def from_config(cls, config: dict) -> VAE:
        config = dict(config)
        for part in ("encoder", "decoder", "prior"):
            if config.get(part) is not None:
                config[part] = keras.saving.deserialize_keras_object(config[part])
        return cls(**config)


def build_vae(cfg: Train, seed: int, binarize: bool = False) -> VAE:
    """The VAE described by the train section of params.yaml, built on MNIST's image shape;
    ``binarize``: draw binary training inputs per step (dynamic binarization)."""
    prior = None
    if cfg.prior.kind == "mixture":
        prior = MixturePrior(cfg.prior.components, cfg.architecture.latent_dim, seed, name="prior")
    vae = VAE(
        build_encoder(cfg.architecture),
        build_decoder(cfg.architecture),
        likelihood=cfg.likelihood.kind,
        sigma=cfg.likelihood.sigma,
        free_bits=cfg.kl.free_bits,
        target_beta=cfg.kl.beta,
        seed=seed,
        binarize=binarize,
        prior=prior,
        name="vae",
    )
    vae(ops.zeros((1, *IMAGE_SHAPE)))  # builds every sub-model before fit or BackupAndRestore
    return vae
