"""Atomic file writes: a reader sees the old file or the complete new one, never a half.

A new file is written under a temporary name in the same folder, flushed to disk, renamed
over the target, and the folder's entry is flushed too, so that a power cut after the rename
cannot bring back the old file or an empty one. Temporary files get the permissions any new
file gets (0666 less the umask), without touching the process umask.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """A new, empty file beside ``path``; renamed over ``path`` (durably) if the block ends
    normally, removed if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    with _temporary_sibling(Path(path)) as tmp, open(tmp, mode) as handle:
        yield handle


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Save plain numeric arrays to an uncompressed ``.npz``, atomically."""
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"{name}: object arrays would need pickle; refusing to save")
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def save_model(model: Any, path: str | os.PathLike[str]) -> None:
    """Save a Keras model atomically. Keras opens the file it is given for writing and fills
    it as it goes, so it is given the temporary sibling (whose name ends in .keras too)."""
    with _temporary_sibling(Path(path)) as tmp:
        model.save(tmp)
