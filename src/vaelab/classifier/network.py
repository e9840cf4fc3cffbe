"""The small MNIST classifier, trained once in its own cached DVC stage on the real training
images; its penultimate layer ("features") is the embedding of the Fréchet distance."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from vaelab.core.mnist import IMAGE_SHAPE
from vaelab.core.params import Classifier

FEATURES = "features"


def build_classifier(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
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


def train_classifier(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cfg: Classifier,
    seed: int,
) -> tuple[keras.Model, float]:
    """Fit on the first ``cfg.train_images`` of ``train`` (images in [0, 1], labels); return
    the model and its accuracy on ``test``."""
    model = build_classifier(seed)
    n = cfg.train_images
    x, y = train
    model.fit(x[:n], y[:n], epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=2)
    _, accuracy = model.evaluate(*test, verbose=0)
    return model, float(accuracy)


def feature_extractor(classifier: keras.Model) -> keras.Model:
    return keras.Model(classifier.inputs, classifier.get_layer(FEATURES).output)


def embed(features: keras.Model, x: np.ndarray) -> np.ndarray:
    return features.predict(x, batch_size=500, verbose=0)
