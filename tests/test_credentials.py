"""Credentials in MLFLOW_TRACKING_URI are used, never printed; a store that refuses access is
not mistaken for one that lacks the run."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import mlflow
import pytest

from tests.conftest import ROOT, free_port
from vaelab.core.errors import VaelabError
from vaelab.tracking import runs
from vaelab.tracking.store import connect

SECRET = "s3cret"
GOOD = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()


class _Server(http.server.BaseHTTPRequestHandler):
    """/health for the right password only; MLflow's API answers 401 as a real server does."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        ok = self.path == "/health" and self.headers.get("Authorization") == GOOD
        body = (
            b"OK"
            if ok
            else json.dumps(
                {"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}
            ).encode()
        )
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_credentials_in_the_uri_pass_the_health_check_and_leave_the_uri(server):
    environ = {"MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@127.0.0.1:{server}"}
    bare = connect(require=True, environ=environ)
    assert bare == f"http://127.0.0.1:{server}" == mlflow.get_tracking_uri()
    assert environ["MLFLOW_TRACKING_URI"] == bare
    assert (environ["MLFLOW_TRACKING_USERNAME"], environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "alice",
        SECRET,
    )
    assert _Server.seen[-1] == GOOD


@pytest.mark.parametrize("where", ["127.0.0.1:{port}", "host:80a"])
def test_a_dead_or_malformed_uri_is_reported_without_the_password(where):
    uri = f"https://alice:{SECRET}@{where.format(port=free_port())}"
    with pytest.raises(VaelabError) as error:
        connect(require=True, environ={"MLFLOW_TRACKING_URI": uri})
    assert SECRET not in str(error.value)
    assert ("does not answer" if "80a" not in where else "MLFLOW_TRACKING_URI=") in str(error.value)


def test_a_command_prints_one_line_without_the_password(tmp_path):
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    uri = f"https://alice:{SECRET}@127.0.0.1:{free_port()}"
    env = {"PATH": str(Path(sys.executable).parent), "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(
        [sys.executable, "-m", "vaelab", "compare"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "does not answer" in done.stderr
    assert SECRET not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_redact_hides_only_passwords():
    from vaelab.core.errors import redact

    assert redact("x https://a:b@h:1/p y http://h/p") == "x https://a:***@h:1/p y http://h/p"
    assert redact("postgresql://mlflow:pw@127.0.0.1/db") == "postgresql://mlflow:***@127.0.0.1/db"


def test_a_refused_resume_keeps_the_state(server, tmp_path):
    run_file = tmp_path / "train-x" / "mlflow_run_id"
    connect(environ={"MLFLOW_TRACKING_URI": f"http://alice:wrong@127.0.0.1:{server}"})
    with pytest.raises(VaelabError) as error:
        runs._check_run_in_store("0" * 32, mlflow.get_tracking_uri(), run_file)
    message = str(error.value)
    assert "UNAUTHENTICATED" in message and "is kept" in message and "delete" not in message


def test_a_run_missing_from_the_store_is_told_so(tmp_path):
    connect(environ={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    with pytest.raises(VaelabError, match=r"is not in the tracking store .* or delete"):
        runs._check_run_in_store("0" * 32, mlflow.get_tracking_uri(), tmp_path / "run_id")
