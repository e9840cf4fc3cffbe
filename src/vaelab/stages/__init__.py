"""Thin DVC stage entry points: ``python -m vaelab.stages.<stage>`` from the project root."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from vaelab.errors import VaelabError
from vaelab.params import Params, load_params

# TensorFlow's C++ start-up chatter (oneDNN notices, "no CUDA driver" on CPU machines) would
# bury the stage's own output; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_stage(main: Callable[[Params], object]) -> None:
    """Validate params.yaml, run ``main``; turn expected failures into a message and exit 1."""
    try:
        main(load_params("params.yaml"))
    except VaelabError as exc:
        sys.exit(f"error: {exc}")
    except OSError as exc:  # disk full, permission denied, read-only filesystem ...
        where = f"{exc.filename}: " if exc.filename else ""
        sys.exit(
            f"error: {where}{exc.strerror or exc}. Nothing was half-written; free disk space "
            "or fix the permissions, then re-run the stage."
        )
