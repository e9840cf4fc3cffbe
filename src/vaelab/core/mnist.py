"""MNIST's fixed facts: image shape, split sizes, and the scaling of its pixels to [0, 1]."""

from __future__ import annotations

import numpy as np

HEIGHT = WIDTH = 28
IMAGE_SHAPE = (HEIGHT, WIDTH, 1)  # channels last, as Keras expects
PIXELS = HEIGHT * WIDTH
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., None]
