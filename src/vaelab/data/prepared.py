"""The prepared data's format and the one way to read it.

Each split is an uncompressed ``.npz`` of plain arrays (never pickles): ``x`` float32
[N, 28, 28, 1] in [0, 1], ``y`` uint8 labels, and with static binarization ``x_static``, the
stored draw. ``meta.json`` records the binarization mode, the seed, sizes and checksums.
"""

from __future__ import annotations

import json
import zipfile
from typing import Any

import numpy as np

from vaelab.core.errors import DataFileError
from vaelab.core.mnist import IMAGE_SHAPE
from vaelab.core.paths import SPLITS, Artifacts

BINARIZE_MODES = ("none", "static", "dynamic")
META_KEYS = ("binarize", "seed", "sizes", "md5")
STATIC_KEY = "x_static"
_REPREPARE = "Restore it with `dvc checkout` or re-run `dvc repro prepare`"


def binarize_static(x: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """One seeded Bernoulli draw per pixel with p = intensity."""
    rng = np.random.default_rng([seed, 2, stream])
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def read_meta(paths: Artifacts) -> dict[str, Any]:
    """The metadata prepare recorded (binarization mode, seed, sizes, checksums)."""
    path = paths.prepared_meta
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        missing = [key for key in META_KEYS if key not in meta]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(missing)}")
        if meta["binarize"] not in BINARIZE_MODES:
            raise ValueError(f"unknown binarize mode {meta['binarize']!r}")
    except FileNotFoundError:
        raise DataFileError(path, "missing", _REPREPARE) from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"unreadable metadata ({exc})", _REPREPARE) from None
    return meta


def load_prepared(paths: Artifacts, split: str, key: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [N, 28, 28, 1] in [0, 1], y uint8 [N]) of a prepared split; ``key`` "x" is
    the grayscale image, "x_static" the stored static binarization."""
    path = paths.prepared_split(split)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz[key], npz["y"]
    except FileNotFoundError:
        raise DataFileError(path, "missing", _REPREPARE) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(path, f"corrupted or truncated ({exc})", _REPREPARE) from None
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise DataFileError(path, f"x has dtype {x.dtype} shape {x.shape}", _REPREPARE)
    if y.shape != (len(x),):
        raise DataFileError(path, f"y shape {y.shape} does not match x", _REPREPARE)
    if len(x) and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise DataFileError(path, "x is outside [0, 1]", _REPREPARE)
    return x, y


def model_data(
    paths: Artifacts, split: str, fixed_draw: bool = True, binary: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The images a model sees for ``split``, binarized as prepare recorded.

    static: the stored draw. none: grayscale. dynamic: grayscale when ``fixed_draw`` is false
    (the training pipeline draws per batch), else one draw seeded by split, the same in every
    epoch, run and stage, so validation and test numbers are comparable. ``binary`` gives
    none the dynamic mode's fixed draw too: a Bernoulli likelihood is only a likelihood of
    binary images, and these are the very images a dynamic run is measured on.
    """
    meta = read_meta(paths)
    mode = meta["binarize"]
    x, y = load_prepared(paths, split, STATIC_KEY if mode == "static" else "x")
    if fixed_draw and (mode == "dynamic" or (binary and mode == "none")):
        x = binarize_static(x, meta["seed"], stream=len(SPLITS) + SPLITS.index(split))
    return x, y
