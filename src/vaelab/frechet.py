"""Fréchet distance between image sets in the feature space of a small MNIST classifier.

The classifier is trained once, in its own cached DVC stage, on the real training images;
its penultimate layer ("features") is the embedding, as Inception's is for FID.
"""

from __future__ import annotations

import numpy as np

FEATURES = "features"


def build_classifier(seed: int):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", name=FEATURES)(x)
    outputs = layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="mnist_classifier")
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train_classifier(raw_dir, cfg, seed: int) -> tuple[object, float]:
    """Fit the classifier on the first ``cfg.train_images`` real training images (grayscale);
    return it and its accuracy on the 10,000 test images."""
    from vaelab.mnist import load_split
    from vaelab.prepare import normalize

    train_images, train_labels = load_split(raw_dir, "train")
    test_images, test_labels = load_split(raw_dir, "test")
    model = build_classifier(seed)
    n = cfg.train_images
    model.fit(
        normalize(train_images[:n]),
        train_labels[:n],
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        verbose=2,
    )
    _, accuracy = model.evaluate(normalize(test_images), test_labels, verbose=0)
    return model, float(accuracy)


def feature_extractor(classifier):
    import keras

    return keras.Model(classifier.inputs, classifier.get_layer(FEATURES).output)


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets [N, F].

    Tr (C_a C_b)^(1/2) is computed as Tr (S C_b S)^(1/2) with S = C_a^(1/2), a symmetric
    PSD matrix, so singular covariances (dead ReLU features) need no regularisation.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0, None)).sum()
    mean_term = np.sum((a.mean(0) - b.mean(0)) ** 2)
    return float(max(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * cross, 0.0))
