"""Normalize MNIST to [0, 1] float32, carve a seeded validation split, binarize if asked.

Dynamic binarization is only recorded here: the training input pipeline draws a fresh
Bernoulli sample per batch. Augmentation is likewise applied on the fly at training time.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.atomic import save_npz, write_json
from vaelab.errors import DataFileError
from vaelab.fetch import md5_of
from vaelab.mnist import load_split
from vaelab.params import Prepare

SPLITS = ("train", "val", "test")
META = "meta.json"
STATIC_KEY = "x_static"
_REPREPARE = "Restore it with `dvc checkout` or re-run `dvc repro prepare`"


def split_indices(n_train: int, cfg: Prepare, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices into the 60k training images, honouring subset."""
    order = np.random.default_rng([seed, 0]).permutation(n_train)[: cfg.subset or n_train]
    return np.sort(order[cfg.val_size :]), np.sort(order[: cfg.val_size])


def test_indices(n_test: int, cfg: Prepare, seed: int) -> np.ndarray:
    """Seeded choice of test images when subset is set; all of them otherwise."""
    if cfg.test_size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng([seed, 1]).permutation(n_test)[: cfg.test_size])


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., None]


def binarize_static(x: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """One seeded Bernoulli draw per pixel with p = intensity."""
    rng = np.random.default_rng([seed, 2, stream])
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def prepare(raw_dir: str | Path, out_dir: str | Path, cfg: Prepare, seed: int) -> dict[str, Any]:
    """Write train/val/test ``.npz`` files (x, y) and meta.json; return the metadata."""
    train_images, train_labels = load_split(raw_dir, "train")
    test_images, test_labels = load_split(raw_dir, "test")
    train_idx, val_idx = split_indices(len(train_images), cfg, seed)
    test_idx = test_indices(len(test_images), cfg, seed)
    parts = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images[test_idx], test_labels[test_idx]),
    }
    out = Path(out_dir)
    checksums = {}
    for stream, (name, (images, labels)) in enumerate(parts.items()):
        x = normalize(images)
        extra = {STATIC_KEY: binarize_static(x, seed, stream)} if cfg.binarize == "static" else {}
        path = out / f"{name}.npz"
        save_npz(path, x=x, y=labels, **extra)
        checksums[name] = md5_of(path.read_bytes())
    meta = {
        "binarize": cfg.binarize,
        "seed": seed,
        "sizes": {name: len(labels) for name, (_, labels) in parts.items()},
        "md5": checksums,
    }
    write_json(out / META, meta)
    return meta


def read_meta(prepared_dir: str | Path) -> dict[str, Any]:
    """The metadata prepare recorded (binarization mode, sizes, checksums)."""
    path = Path(prepared_dir) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta["binarize"] not in ("none", "static", "dynamic"):
            raise ValueError(f"unknown binarize mode {meta['binarize']!r}")
    except FileNotFoundError:
        raise DataFileError(path, "missing", _REPREPARE) from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"unreadable metadata ({exc})", _REPREPARE) from None
    return meta


def load_prepared(
    prepared_dir: str | Path, split: str, key: str = "x"
) -> tuple[np.ndarray, np.ndarray]:
    """Load (x float32 [N, 28, 28, 1] in [0, 1], y uint8 [N]) of a prepared split; ``key``
    "x" is the grayscale image, "x_static" the stored static binarization."""
    path = Path(prepared_dir) / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz[key], npz["y"]
    except FileNotFoundError:
        raise DataFileError(path, "missing", _REPREPARE) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(path, f"corrupted or truncated ({exc})", _REPREPARE) from None
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (28, 28, 1):
        raise DataFileError(path, f"x has dtype {x.dtype} shape {x.shape}", _REPREPARE)
    if y.shape != (len(x),):
        raise DataFileError(path, f"y shape {y.shape} does not match x", _REPREPARE)
    if len(x) and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise DataFileError(path, "x is outside [0, 1]", _REPREPARE)
    return x, y


def model_data(
    prepared_dir: str | Path, split: str, fixed_draw: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The images a model sees for ``split``, binarized as prepare recorded.

    static: the stored draw. none: grayscale. dynamic: grayscale when ``fixed_draw`` is false
    (the training pipeline draws per batch), else one draw seeded by split, the same in every
    epoch, run and stage, so validation and test numbers are comparable.
    """
    meta = read_meta(prepared_dir)
    mode = meta["binarize"]
    x, y = load_prepared(prepared_dir, split, STATIC_KEY if mode == "static" else "x")
    if mode == "dynamic" and fixed_draw:
        x = binarize_static(x, meta["seed"], stream=len(SPLITS) + SPLITS.index(split))
    return x, y
