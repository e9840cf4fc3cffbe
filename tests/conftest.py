"""Shared fixtures: tiny IDX data made on the fly, and the real MNIST mirror when present."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from vaelab.core.params import Params, load_params, merge
from vaelab.sources.fetch import MIRROR_ENV
from vaelab.sources.files import FileSpec, md5_of
from vaelab.sources.idx import idx_bytes

ROOT = Path(__file__).resolve().parents[1]
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_env():
    """`mlflow.set_tracking_uri` also sets $MLFLOW_TRACKING_URI, which subprocesses of later
    tests would inherit: every test starts and ends without these variables."""
    saved = {name: os.environ.pop(name, None) for name in _MLFLOW_ENV}
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def tiny_mnist_arrays(n_train: int = 300, n_test: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Digit-like uint8 images (a bright square whose position encodes the label)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = 4 + 2 * (label // 5), 4 + 4 * (label % 5)
            images[i, r : r + 8, c : c + 8] = 255
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    return arrays


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> tuple[Path, dict[str, FileSpec]]:
    """A folder holding tiny .gz IDX files, and the checksum table describing them."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    specs = {}
    for name, array in tiny_mnist_arrays().items():
        data = idx_bytes(array)
        (mirror / f"{name}.gz").write_bytes(gzip.compress(data))
        specs[name] = FileSpec(md5_of(data), len(data))
    return mirror, specs


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    """A data/raw folder with tiny decompressed IDX files."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, array in tiny_mnist_arrays().items():
        (raw / name).write_bytes(idx_bytes(array))
    return raw


@pytest.fixture(scope="session")
def real_mirror() -> Path:
    """The folder with the real MNIST .gz files ($VAELAB_MNIST_MIRROR, else ../shared/mnist)."""
    path = Path(os.environ.get(MIRROR_ENV) or ROOT.parent / "shared" / "mnist")
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST mirror not found at {path}; set {MIRROR_ENV}")
    return path.resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run a command with this interpreter's bin dir first on PATH; fail with its output."""
    full_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        **(env or {}),
    }
    result = subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path: Path, real_mirror: Path) -> Path:
    """A fresh git + DVC repository holding this project's pipeline, on a small subset."""
    return make_project(tmp_path / "project", real_mirror, tmp_path / "dvc-remote")


def make_project(repo: Path, mirror: Path, dvc_remote: Path) -> Path:
    """``repo``: a git + DVC repository of this project's pipeline on a small subset of the
    MNIST in ``mirror``, its default DVC remote the folder ``dvc_remote``."""
    repo.mkdir()
    for name in (
        "dvc.yaml",
        "params.yaml",
        "MLproject",
        "python_env.yaml",
        ".gitignore",
        "pyproject.toml",
        "requirements.lock",
        "README.md",
    ):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"].update(subset=600, val_size=100)
    params["train"].update(epochs=2, batch_size=50)
    params["train"]["architecture"].update(hidden=[64], latent_dim=4)
    params["classifier"].update(train_images=600, epochs=1)
    params["evaluate"].update(importance_samples=20, prior_samples=200)
    params["figures"].update(projection_points=200)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {MIRROR_ENV: str(mirror)}
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "ci@vaelab.test"], repo)
    run(["git", "config", "user.name", "vaelab ci"], repo)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "remote", "add", "-d", "local", str(dvc_remote)], repo)
    return repo


def run_module(module: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd``, as a user runs it; its exit code is not checked."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def commit_all(repo: Path, message: str) -> str:
    """Commit everything in ``repo``; return the commit id."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).strip()


TINY_TRAIN = {
    "epochs": 2,
    "batch_size": 50,
    "architecture": {"hidden": [32], "filters": [4, 8], "dense": 16, "latent_dim": 4},
    "early_stopping": {"enabled": False},
    "backend": "tensorflow",  # the test process's Keras (the JAX runs: test_backends.py)
}


@pytest.fixture
def tiny_workdir(tmp_path: Path, tiny_raw: Path, monkeypatch: pytest.MonkeyPatch):
    """A working directory with tiny prepared data and its own MLflow store; returns a
    function building the committed params with overrides of the train section."""
    from vaelab.core.paths import Artifacts
    from vaelab.data.prepare import prepare

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)

    def make(binarize: str = "dynamic", augment: dict | None = None, **train) -> Params:
        params = committed_params().replace(
            {
                "base": {"seed": 3, "paths": {"raw": str(tiny_raw)}},
                "prepare": {
                    "subset": None,
                    "val_size": 50,
                    "binarize": binarize,
                    "augment": augment or {},
                },
                "train": merge(TINY_TRAIN, train),
            }
        )
        prepare(Artifacts.of(params), params.prepare, params.base.seed)
        return params

    return make


def committed_params() -> Params:
    """params.yaml as committed: the single source of every default."""
    return load_params(ROOT / "params.yaml")


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL-backed MLflow server on 127.0.0.1 (scripts/tracking_server.sh); its URI."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql); `make test` installs it"
        )
    # Not under pytest's private tmp_path: as root, PostgreSQL runs as the postgres user,
    # which must be able to reach its data folder.
    server_dir = Path(tempfile.mkdtemp(prefix="vaelab-server-"))
    server_dir.chmod(0o755)
    env = {
        "VAELAB_SERVER_DIR": str(server_dir),
        "VAELAB_SERVER_PORT": str(free_port()),
        "VAELAB_PG_PORT": str(free_port()),
    }
    script = str(ROOT / "scripts" / "tracking_server.sh")
    yield run(["bash", script, "start"], tmp_path, env, timeout=300).strip().splitlines()[-1]
    run(["bash", script, "stop"], tmp_path, env)
    shutil.rmtree(server_dir, ignore_errors=True)
