"""Strict reader and writer for the IDX format MNIST ships in (big-endian header + raw data)."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from vaelab.core.atomic import atomic_write
from vaelab.core.errors import DataFileError

UBYTE = 0x08
REFETCH_HINT = "Restore it with `dvc checkout` or re-run the fetch stage (`dvc repro -f fetch`)"


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a uint8 array; raise DataFileError on any inconsistency."""

    def bad(problem: str) -> DataFileError:
        return DataFileError(name, f"not a valid IDX file ({problem})", REFETCH_HINT)

    if len(data) < 4:
        raise bad(f"{len(data)} bytes, too short for a header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UBYTE:
        raise bad(f"magic number {data[:4].hex()} is not 0000 08 0N (unsigned bytes)")
    if not 1 <= ndim <= 4:
        raise bad(f"{ndim} dimensions; expected 1 to 4")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad(f"header truncated at {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)  # Python ints: no overflow, unlike int64
    if len(data) != expected:
        raise bad(f"{len(data)} bytes but the header {shape} says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and parse an IDX file, naming the file and the fix in every error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(path, "missing", REFETCH_HINT) from None
    return parse_idx(data, str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer supports uint8 only, got {array.dtype}")
    header = struct.pack(f">HBB{array.ndim}I", 0, UBYTE, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, atomically."""
    with atomic_write(path) as handle:
        handle.write(idx_bytes(array))
