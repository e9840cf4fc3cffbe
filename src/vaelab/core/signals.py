"""Ctrl-C and SIGTERM as one exception, `KeyboardInterrupt`, raised where the signal lands,
except inside `uninterrupted()` blocks (a checkpoint being written), which finish first."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

_held: list[int] | None = None  # signals that came during an uninterrupted block


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a scheduler or `dvc queue kill` sends), unwound as Ctrl-C is."""


def _raise(signum: int) -> None:
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _handle(signum: int, frame: object) -> None:
    if _held is None:
        _raise(signum)
    _held.append(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through this module (main thread only)."""
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block to its end; a signal that came meanwhile is raised after it."""
    global _held
    outer, _held = _held, [] if _held is None else _held
    try:
        yield
    finally:
        held, _held = _held, outer
        if outer is None and held:
            _raise(held[0])
