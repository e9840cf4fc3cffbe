"""Ctrl-C and SIGTERM as one exception, `KeyboardInterrupt`, raised where the signal lands,
except inside `uninterrupted()` blocks (a checkpoint being written), which finish first.

Library code can swallow that exception (Keras' `pythonify_logs` has a bare ``except:``, and
on JAX the training loop waits there most of the time): `reraise()`, called at points of
our own, raises a signal that came and did not end the process."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

_held: list[int] | None = None  # signals that came during an uninterrupted block
_received: int | None = None  # the first signal that came, raised or not


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a scheduler or `dvc queue kill` sends), unwound as Ctrl-C is."""


def _raise(signum: int) -> None:
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _handle(signum: int, frame: object) -> None:
    global _received
    _received = _received or signum
    if _held is None:
        _raise(signum)
    _held.append(signum)


def reraise() -> None:
    """Raise the signal that came, if one did (outside an uninterrupted block)."""
    if _received is not None and _held is None:
        _raise(_received)


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
