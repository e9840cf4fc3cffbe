"""The four MNIST files: names, published checksums, and loading a split from data/raw."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vaelab.core.errors import DataFileError
from vaelab.core.mnist import HEIGHT, WIDTH
from vaelab.sources.idx import REFETCH_HINT, read_idx


class FileSpec(NamedTuple):
    md5: str  # of the decompressed IDX file, as published
    size: int


FILES: dict[str, FileSpec] = {
    "train-images-idx3-ubyte": FileSpec("6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train-labels-idx1-ubyte": FileSpec("a25bea736e30d166cdddb491f175f624", 60_008),
    "t10k-images-idx3-ubyte": FileSpec("2646ac647ad5339dbf082846283269ea", 7_840_016),
    "t10k-labels-idx1-ubyte": FileSpec("27ae3e4e09519cfbb04c329615203637", 10_008),
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def load_split(raw_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels uint8 [N]) of the raw 'train' or 'test' split."""
    prefix = SPLIT_PREFIX[split]
    images_path = Path(raw_dir) / f"{prefix}-images-idx3-ubyte"
    labels_path = Path(raw_dir) / f"{prefix}-labels-idx1-ubyte"
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (HEIGHT, WIDTH):
        raise DataFileError(
            images_path, f"shape {images.shape} is not (N, {HEIGHT}, {WIDTH})", REFETCH_HINT
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataFileError(
            labels_path, f"shape {labels.shape} does not match {len(images)} images", REFETCH_HINT
        )
    if labels.size and labels.max() > 9:
        raise DataFileError(labels_path, f"label {labels.max()} is not a digit", REFETCH_HINT)
    return images, labels
