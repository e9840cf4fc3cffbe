"""Stages that need no TensorFlow do not import it (start-up cost of every `dvc repro`)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("stage", ["fetch", "prepare"])
def test_light_stages_do_not_import_tensorflow_or_mlflow(stage):
    probe = (
        f"import sys, vaelab.stages.{stage}; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
