"""tf.data input pipelines: shuffle, batch, augment with Keras preprocessing layers, prefetch.
Seeded, so two runs with one seed see the same batches. On every Keras backend: Keras runs its
preprocessing layers with TensorFlow inside tf.data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from keras import layers

from vaelab.core.params import Augment


def augmentation_layers(cfg: Augment, seed: int, binary: bool = False) -> list[layers.Layer]:
    """Keras preprocessing layers for the enabled augmentations (empty when disabled).

    ``binary`` inputs (static binarization) are resampled with nearest-neighbour
    interpolation so they stay binary.
    """
    if not cfg.enabled:
        return []
    fill = {
        "fill_mode": "constant",
        "fill_value": 0.0,
        "interpolation": "nearest" if binary else "bilinear",
    }
    chosen: list[layers.Layer] = []
    if cfg.rotation:
        chosen.append(layers.RandomRotation(cfg.rotation / 360.0, seed=seed + 1, **fill))
    if cfg.shift:
        chosen.append(layers.RandomTranslation(cfg.shift, cfg.shift, seed=seed + 2, **fill))
    if cfg.shear:
        chosen.append(layers.RandomShear(cfg.shear, cfg.shear, seed=seed + 3, **fill))
    if cfg.zoom:
        chosen.append(layers.RandomZoom(cfg.zoom, cfg.zoom, seed=seed + 4, **fill))
    flip = {
        (True, False): "horizontal",
        (False, True): "vertical",
        (True, True): "horizontal_and_vertical",
    }.get((cfg.horizontal_flip, cfg.vertical_flip))
    if flip:
        chosen.append(layers.RandomFlip(flip, seed=seed + 5))
    return chosen


def batch_transform(augment: Augment, seed: int, binarize: str) -> Callable | None:
    """The enabled augmentations, clipped to [0, 1]; None when there are none. (Dynamic
    binarization is drawn by the model, in its train step: `VAE.training_inputs`.)

    The layers' seed generators are stateful: each call draws anew, reproducibly.
    """
    steps = augmentation_layers(augment, seed, binary=binarize == "static")
    if not steps:
        return None

    def transform(batch):
        for step in steps:
            batch = step(batch, training=True)
        return tf.clip_by_value(batch, 0.0, 1.0)  # TensorFlow: inside tf.data on any backend

    return transform


def _leave_cores_to_training(ds: tf.data.Dataset) -> tf.data.Dataset:
    """One tf.data thread, two batches ahead: on a CPU its default pool (a thread per core,
    autotuned) competes with the training step for the same cores."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return ds.with_options(options)


def training_dataset(
    x: np.ndarray, batch_size: int, seed: int, augment: Augment, binarize: str
) -> tf.data.Dataset:
    """Reshuffled every epoch, then transformed per batch (see `batch_transform`)."""
    ds = (
        tf.data.Dataset.from_tensor_slices(x)
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    transform = batch_transform(augment, seed, binarize)
    if transform is not None:
        # A sequential map: with stateful seed generators, parallel calls would make the
        # draws depend on thread timing. Prefetch still overlaps it with training.
        ds = ds.map(transform)
    return _leave_cores_to_training(ds.prefetch(2))


def evaluation_dataset(x: np.ndarray, batch_size: int) -> tf.data.Dataset:
    return _leave_cores_to_training(
        tf.data.Dataset.from_tensor_slices(x).batch(batch_size).cache().prefetch(2)
    )
