"""An exclusive lock on a folder, held by one process at a time. The kernel drops it when its
holder dies, so a killed process never keeps it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vaelab.core.errors import VaelabError


@contextlib.contextmanager
def exclusive(folder: Path, busy: str, name: str = ".lock", wait: bool = False) -> Iterator[None]:
    """Hold ``folder`` (created if absent); if another process holds it, wait for it, or
    (without ``wait``) VaelabError with ``busy``, its ``{pid}`` filled in."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise VaelabError(busy.format(pid=handle.read().strip() or "?")) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
