"""scripts/tracking_server.sh: never a network-facing server without authentication, only its
own Host headers, and no secrets left behind when the database cannot be created."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import ROOT, free_port, run

SCRIPT = ROOT / "scripts" / "tracking_server.sh"


@pytest.fixture
def server_dir():
    # Not under pytest's private tmp_path: as root, PostgreSQL runs as the postgres user,
    # which must be able to reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="vaelab-server-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "192.168.1.10", "example.org", "127.attacker.example", "127.0.0.1.evil"]
)
def test_a_network_bind_without_authentication_is_refused(server_dir, host):
    result = _script(
        "start", env={"VAELAB_SERVER_DIR": str(server_dir), "VAELAB_SERVER_HOST": host}
    )
    assert result.returncode == 1
    assert "without authentication" in result.stderr and "VAELAB_SERVER_AUTH=basic" in result.stderr
    assert list(server_dir.iterdir()) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_a_loopback_address_needs_no_authentication(server_dir, host):
    env = {"VAELAB_SERVER_DIR": str(server_dir / "s"), "VAELAB_SERVER_HOST": host}
    result = _script("start", env={**env, "VAELAB_PG_BIN": str(server_dir / "no-postgres")})
    assert "without authentication" not in result.stderr, result.stderr


def test_a_failed_initdb_leaves_no_password_behind(server_dir):
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("runuser is needed to act as the postgres user")
    fake_bin = server_dir / "bin"
    fake_bin.mkdir()
    initdb = fake_bin / "initdb"
    initdb.write_text("#!/bin/sh\necho 'initdb: could not create directory' >&2\nexit 1\n")
    initdb.chmod(initdb.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    data = server_dir / "data"
    data.mkdir()
    data.chmod(0o755)
    result = _script("start", env={"VAELAB_SERVER_DIR": str(data), "VAELAB_PG_BIN": str(fake_bin)})
    assert result.returncode == 1 and "initdb failed" in result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["artifacts", "initdb.log"]


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.postgres
def test_basic_auth_server_refuses_anonymous_and_foreign_hosts(server_dir, tmp_path, monkeypatch):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    env = {
        "VAELAB_SERVER_DIR": str(server_dir / "server"),  # the script makes it
        "VAELAB_SERVER_PORT": str(free_port()),
        "VAELAB_PG_PORT": str(free_port()),
        "VAELAB_SERVER_AUTH": "basic",
    }
    server_dir = server_dir / "server"
    uri = run(["bash", str(SCRIPT), "start"], tmp_path, env, timeout=300).strip().splitlines()[-1]
    try:
        password = (server_dir / "admin-password").read_text().strip()
        assert stat.S_IMODE((server_dir / "admin-password").stat().st_mode) == 0o600
        api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        assert _status(api, {}) == 401
        assert (
            _status(api, {"Authorization": "Basic " + base64.b64encode(b"admin:x").decode()}) == 401
        )
        assert _status(api, {"Authorization": f"Basic {token}"}) == 200
        forged = {"Authorization": f"Basic {token}", "Host": "attacker.example"}
        assert _status(api, forged) in (400, 403)
        log = (server_dir / "mlflow.log").read_text()
        assert password not in log
        for private in ("basic_auth.db", "mlflow.log", "basic_auth.ini", "secret-key"):
            assert stat.S_IMODE((server_dir / private).stat().st_mode) & 0o077 == 0, private
        assert stat.S_IMODE(server_dir.stat().st_mode) & 0o066 == 0  # nobody else lists it

        # the password in MLFLOW_TRACKING_URI: the health check and MLflow's calls use it
        from vaelab.core.errors import VaelabError
        from vaelab.tracking.runs import _check_run_in_store
        from vaelab.tracking.store import connect

        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(name, "")  # restored afterwards
        host = uri.removeprefix("http://")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:{password}@{host}")
        assert connect(require=True) == uri
        assert mlflow.MlflowClient().search_experiments()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:wrong@{host}")
        connect()
        with pytest.raises(VaelabError) as refused:
            _check_run_in_store("0" * 32, uri, tmp_path / "train-x" / "mlflow_run_id")
        assert "is kept" in str(refused.value) and "delete" not in str(refused.value)
        assert "wrong" not in str(refused.value)
    finally:
        run(["bash", str(SCRIPT), "stop"], tmp_path, env)
