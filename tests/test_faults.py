"""Writing outputs when the disk is full, read-only or over a size limit: a clear error,
exit 1, no half-written file, and the previous file intact."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import committed_params


def _stage_env(tmp_path: Path, tiny_raw: Path, prepared: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    params = committed_params().replace(
        {
            "base": {"paths": {"raw": str(tiny_raw), "prepared": str(prepared)}},
            "prepare": {"val_size": 50, "subset": None},
            "train": {"batch_size": 50},
        }
    )
    (work / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    return work


def _run_prepare(work: Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vaelab.stages.prepare"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec,
    )


@pytest.fixture
def small_mount(tmp_path):
    """A tmpfs mount point (needs root; skipped where mounting is not allowed)."""
    mounts = []

    def make(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(target)
        return target

    yield make
    for target in mounts:
        subprocess.run(["umount", str(target)], check=False)


def _assert_clean_failure(result, prepared: Path, fragment: str, before: bytes) -> None:
    assert result.returncode == 1
    assert fragment in result.stderr and "Nothing was half-written" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in prepared.iterdir() if p.name.startswith(".")] == []
    assert (prepared / "train.npz").read_bytes() == before


def test_disk_full(tmp_path, tiny_raw, small_mount):
    prepared = small_mount("size=600k")
    (prepared / "train.npz").write_bytes(b"previous version")
    result = _run_prepare(_stage_env(tmp_path, tiny_raw, prepared))
    _assert_clean_failure(result, prepared, "No space left on device", b"previous version")


def test_read_only_output(tmp_path, tiny_raw, small_mount):
    prepared = small_mount("size=1m")
    (prepared / "train.npz").write_bytes(b"previous version")
    subprocess.run(["mount", "-o", "remount,ro", str(prepared)], check=True)
    result = _run_prepare(_stage_env(tmp_path, tiny_raw, prepared))
    assert result.returncode == 1 and "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
    assert (prepared / "train.npz").read_bytes() == b"previous version"


def test_file_size_limit(tmp_path, tiny_raw):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "train.npz").write_bytes(b"previous version")

    def limit() -> None:  # the kernel refuses writes past 100 kB (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = _run_prepare(_stage_env(tmp_path, tiny_raw, prepared), preexec=limit)
    _assert_clean_failure(result, prepared, "File too large", b"previous version")
