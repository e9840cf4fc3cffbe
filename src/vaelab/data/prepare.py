"""The prepare stage: normalize MNIST to [0, 1], carve a seeded validation split, binarize if
asked, and write the prepared data (format: `vaelab.data.prepared`).

Dynamic binarization is only recorded here: the training input pipeline draws a fresh
Bernoulli sample per batch. Augmentation is likewise applied on the fly at training time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vaelab.core.atomic import save_npz, write_json
from vaelab.core.mnist import normalize
from vaelab.core.params import Prepare
from vaelab.core.paths import Artifacts
from vaelab.data.prepared import STATIC_KEY, binarize_static
from vaelab.sources.files import load_split, md5_of


def split_indices(n_train: int, cfg: Prepare, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices into the 60k training images, honouring subset."""
    order = np.random.default_rng([seed, 0]).permutation(n_train)[: cfg.subset or n_train]
    return np.sort(order[cfg.val_size :]), np.sort(order[: cfg.val_size])


def test_indices(n_test: int, cfg: Prepare, seed: int) -> np.ndarray:
    """Seeded choice of test images when subset is set; all of them otherwise."""
    if cfg.test_size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng([seed, 1]).permutation(n_test)[: cfg.test_size])


def prepare(paths: Artifacts, cfg: Prepare, seed: int) -> dict[str, Any]:
    """Write the train/val/test splits and meta.json; return the metadata."""
    train_images, train_labels = load_split(paths.raw, "train")
    test_images, test_labels = load_split(paths.raw, "test")
    train_idx, val_idx = split_indices(len(train_images), cfg, seed)
    test_idx = test_indices(len(test_images), cfg, seed)
    parts = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images[test_idx], test_labels[test_idx]),
    }
    checksums = {}
    for stream, (name, (images, labels)) in enumerate(parts.items()):
        x = normalize(images)
        extra = {STATIC_KEY: binarize_static(x, seed, stream)} if cfg.binarize == "static" else {}
        path = paths.prepared_split(name)
        save_npz(path, x=x, y=labels, **extra)
        checksums[name] = md5_of(path.read_bytes())
    meta = {
        "binarize": cfg.binarize,
        "seed": seed,
        "sizes": {name: len(labels) for name, (_, labels) in parts.items()},
        "md5": checksums,
    }
    write_json(paths.prepared_meta, meta)
    return meta
