"""fetch: checksum verification, mirror fallback over real HTTP, atomicity, offline message."""

from __future__ import annotations

import gzip
import http.server
import threading
import typing
from pathlib import Path

import pytest

from tests.conftest import free_port
from vaelab.errors import FetchError
from vaelab.fetch import MIRROR_ENV, fetch_all, fetch_file, sources
from vaelab.mnist import FILES


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    """/good/<file> serves the real bytes; /broken/<file> misbehaves in a per-file way."""

    files: typing.ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        mirror, _, name = self.path.strip("/").partition("/")
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        if mirror == "broken":
            kind = sorted(self.files).index(name) % 4
            if kind == 0:  # a server error
                self.send_error(503)
                return
            if kind == 1:  # cut off half way: promises more bytes than it sends
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            body = gzip.compress(b"wrong bytes") if kind == 2 else body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_mirrors(tiny_mirror):
    mirror, specs = tiny_mirror
    handler = type(
        "Handler", (_MirrorHandler,), {"files": {p.name: p.read_bytes() for p in mirror.iterdir()}}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, specs
    server.shutdown()
    server.server_close()


def test_local_folder_mirror_first(tiny_mirror, tmp_path, monkeypatch):
    mirror, specs = tiny_mirror
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    used = fetch_all(tmp_path / "raw", ["http://127.0.0.1:1/never-asked"], 5, files=specs)
    assert set(used.values()) == {str(mirror)}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(specs)


def test_falls_back_from_broken_http_mirror(http_mirrors, tmp_path, monkeypatch):
    base, specs = http_mirrors
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    used = fetch_all(tmp_path / "raw", [f"{base}/broken", f"{base}/good"], 5, files=specs)
    # Every file failed on the broken mirror in one of four ways and came from the good one.
    assert set(used.values()) == {f"{base}/good"}
    for name, spec in specs.items():
        assert (tmp_path / "raw" / name).stat().st_size == spec.size
    assert [p.name for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")] == []


def test_checksum_mismatch_is_rejected_and_nothing_written(tiny_mirror, tmp_path):
    mirror, specs = tiny_mirror
    name = "train-labels-idx1-ubyte"
    wrong = specs[name]._replace(md5="0" * 32)
    with pytest.raises(FetchError, match="does not match the published checksum"):
        fetch_file(name, wrong, tmp_path / "raw", [str(mirror)], 5)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_all_sources_failing_names_each_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "no-such-folder"))
    offline = f"http://127.0.0.1:{free_port()}/mnist"
    with pytest.raises(FetchError) as info:
        fetch_all(tmp_path / "raw", [offline], 2, files=dict(list(FILES.items())[:1]))
    message = str(info.value)
    assert "no-such-folder" in message and offline in message
    assert f"export {MIRROR_ENV}=" in message
    assert not any((tmp_path / "raw").iterdir())


def test_sources_order_and_blank_env():
    assert sources(["https://a"], {MIRROR_ENV: "/m"}) == ["/m", "https://a"]
    assert sources(["https://a"], {MIRROR_ENV: "  "}) == ["https://a"]


def test_already_verified_file_is_kept(tiny_mirror, tmp_path):
    mirror, specs = tiny_mirror
    fetch_all(tmp_path, [str(mirror)], 5, files=specs)
    assert set(fetch_all(tmp_path, [], 5, files=specs).values()) == {"already present"}


def test_real_mnist_mirror_verifies(real_mirror, tmp_path, monkeypatch):
    """The real files (CI: ../shared/mnist via $VAELAB_MNIST_MIRROR) match the published MD5s."""
    monkeypatch.setenv(MIRROR_ENV, real_mirror.as_uri())
    used = fetch_all(tmp_path, [], 30)
    assert set(used.values()) == {real_mirror.as_uri()}
    for name, spec in FILES.items():
        assert (Path(tmp_path) / name).stat().st_size == spec.size
