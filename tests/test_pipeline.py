"""End to end: the real DVC pipeline in a fresh git + DVC repository, on real MNIST."""

from __future__ import annotations

import pytest

from tests.conftest import run
from vaelab.prepare import load_prepared, read_meta


@pytest.mark.slow
def test_dvc_repro_fetch_prepare(project, real_mirror):
    out = run(
        ["dvc", "repro", "fetch", "prepare"], project, {"VAELAB_MNIST_MIRROR": str(real_mirror)}
    )
    assert "verified" in out
    assert read_meta(project / "data/prepared")["sizes"] == {"train": 500, "val": 100, "test": 600}
    x, y = load_prepared(project / "data/prepared", "test")
    assert x.shape == (600, 28, 28, 1) and set(y) == set(range(10))
    lock = (project / "dvc.lock").read_text()
    assert "data/raw" in lock and "data/prepared" in lock
    again = run(["dvc", "repro", "fetch", "prepare"], project)
    assert "didn't change" in again or "up to date" in again
    assert "Running stage" not in again
