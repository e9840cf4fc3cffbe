"""The Keras backend of a process, chosen by the params (the record of a run), never by the
environment: set before Keras is first imported, and checked after."""

from __future__ import annotations

import os
import sys

from vaelab.core.errors import VaelabError


def use_backend(name: str) -> None:
    """Make ``name`` the Keras backend of this process: before Keras is imported, whatever
    KERAS_BACKEND or ~/.keras/keras.json say (params.yaml is the record of a run)."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise VaelabError(
                f"Keras was imported with the {keras.backend.backend()!r} backend before "
                f"the params' backend {name!r} could be set: start a new process"
            )
        return
    os.environ["KERAS_BACKEND"] = name
