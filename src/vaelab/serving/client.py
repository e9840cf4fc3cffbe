"""A small client of a running `vaelab serve`: JSON over one kept-alive HTTP connection."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np

from vaelab.core.errors import VaelabError


class Refused(VaelabError):
    """The server answered a request with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    """``Client("http://127.0.0.1:5001").predict(rows, output="score", k=1000)``."""

    def __init__(self, url: str, timeout: float = 600) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self._connection: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if body else {}
            self._connection.request(method, path, body, headers)
            answer = self._connection.getresponse()
            return answer.status, answer.read()
        except (OSError, http.client.HTTPException):
            self.close()  # a fresh connection next time
            raise

    def predict(self, rows: Any, **params: Any) -> Any:
        """The server's predictions for ``rows`` with ``params`` (output, k, n, seed)."""
        body = json.dumps({"inputs": np.asarray(rows).tolist(), "params": params}).encode()
        status, data = self._request("POST", "/invocations", body)
        answer = json.loads(data)
        if status != 200:
            raise Refused(status, answer.get("message", data.decode(errors="replace")))
        return answer["predictions"]

    def wait_until_up(self, seconds: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Return once /ping answers 200; VaelabError after ``seconds`` or once not ``alive``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and alive():
            try:
                if self._request("GET", "/ping")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.5)
        state = "did not answer in time" if alive() else "exited"
        raise VaelabError(f"the server at {self.host}:{self.port} {state}: see its log")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@contextlib.contextmanager
def served(model_uri: str, port: int, log: IO, env: dict[str, str] | None = None,
           patience: float = 300) -> Iterator[Client]:  # fmt: skip
    """`vaelab serve` of ``model_uri`` on 127.0.0.1:``port`` for the block, its output in
    ``log``; on a leash, so it dies with this process too (`vaelab.executors.leash`)."""
    vaelab = str(Path(sys.executable).with_name("vaelab"))
    command = [sys.executable, "-m", "vaelab.executors.leash",
               vaelab, "serve", "--model", model_uri, "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = Client(f"http://127.0.0.1:{port}")
    try:
        client.wait_until_up(patience, alive=lambda: server.poll() is None)
        yield client
    finally:
        client.close()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the leash's group: it kills all of it
            server.wait(timeout=60)
