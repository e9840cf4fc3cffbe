"""Stages that need no deep-learning framework import none (start-up cost of every `dvc repro`)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_module


@pytest.mark.parametrize("stage", ["fetch", "prepare"])
def test_light_stages_do_not_import_a_framework_or_mlflow(stage):
    probe = (
        f"import sys, vaelab.stages.{stage}; "
        "print(sorted(m for m in ('tensorflow', 'jax', 'keras', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("stage", ["train", "evaluate", "figures", "classifier"])
def test_tensorflow_stages_start_quietly_without_a_gpu_driver(tmp_path, stage):
    from vaelab.core.quiet_tf import NVIDIA_DRIVER

    if NVIDIA_DRIVER.exists():
        pytest.skip("a GPU driver is present: TensorFlow's CUDA messages are meant to show")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    result = run_module(f"vaelab.stages.{stage}", tmp_path)
    assert result.returncode == 1  # nothing to work on here: one clear error, nothing else
    assert result.stderr.strip().startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_only_the_cuda_probe_and_info_lines_are_dropped():
    from vaelab.core.quiet_tf import keep_line

    probe = "E0000 00:00:17 12 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
    info = "I0000 00:00:17 12 port.cc:153] oneDNN custom operations are on.\n"
    warning = "W0000 00:00:17 12 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n"
    assert not keep_line(probe, has_driver=False) and keep_line(probe, has_driver=True)
    assert not keep_line(info, has_driver=False)
    assert keep_line(warning, has_driver=False)
