"""Git, as a subprocess: the one place that runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vaelab.core.errors import VaelabError


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``git args`` in ``cwd``; with ``check``, VaelabError with git's own message on failure."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise VaelabError(f"git cannot run ({exc}): install git") from None
    if check and done.returncode != 0:
        raise VaelabError(f"`git {' '.join(args)}` failed: {done.stderr.strip()}")
    return done
