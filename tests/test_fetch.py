"""fetch: checksum verification, mirror fallback over real HTTP, atomicity, offline message."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import tracemalloc
import typing
import zlib
from pathlib import Path

import pytest

from tests.conftest import committed_params, free_port
from vaelab.core.errors import FetchError
from vaelab.core.params import Fetch
from vaelab.sources.fetch import MIRROR_ENV, fetch_all, fetch_file, sources
from vaelab.sources.files import FILES


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    """/good/<file> serves the real bytes; /broken/<file> misbehaves in a per-file way."""

    files: typing.ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        mirror, _, name = self.path.strip("/").partition("/")
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        if mirror == "chunked":  # a chunked response cut inside its first chunk
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body[: len(body) // 2])
            self.close_connection = True
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


def _cfg(mirrors: list[str], timeout: float = 5, **kw) -> Fetch:
    return (
        committed_params()
        .replace({"fetch": {"mirrors": mirrors, "timeout": timeout, "allow_http": True, **kw}})
        .fetch
    )


def test_local_folder_mirror_first(tiny_mirror, tmp_path, monkeypatch):
    mirror, specs = tiny_mirror
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    used = fetch_all(tmp_path / "raw", _cfg(["http://127.0.0.1:1/never-asked"]), files=specs)
    assert set(used.values()) == {str(mirror)}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(specs)


def test_falls_back_from_broken_http_mirror(http_mirrors, tmp_path, monkeypatch):
    base, specs = http_mirrors
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    used = fetch_all(tmp_path / "raw", _cfg([f"{base}/broken", f"{base}/good"]), files=specs)
    # Every file failed on the broken mirror in one of four ways and came from the good one.
    assert set(used.values()) == {f"{base}/good"}
    for name, spec in specs.items():
        assert (tmp_path / "raw" / name).stat().st_size == spec.size
    assert [p.name for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")] == []


def test_a_cut_chunked_response_or_a_malformed_url_moves_on_to_the_next_source(
    http_mirrors, tiny_mirror, tmp_path, monkeypatch
):
    base, specs = http_mirrors
    folder, _ = tiny_mirror
    monkeypatch.setenv(MIRROR_ENV, f"{base}/chunked")
    cfg = _cfg(["https://host:80a/mnist", f"file://{folder}"])
    used = fetch_all(tmp_path / "raw", cfg, files=specs)
    assert set(used.values()) == {f"file://{folder}"}
    monkeypatch.setenv(MIRROR_ENV, f"{base}/chunked")
    with pytest.raises(FetchError) as info:
        fetch_all(tmp_path / "none", _cfg(["https://host:80a/mnist"]), files=specs)
    message = str(info.value)
    assert "IncompleteRead" in message and "InvalidURL" in message and "nonnumeric port" in message


def test_checksum_mismatch_is_rejected_and_nothing_written(tiny_mirror, tmp_path):
    mirror, specs = tiny_mirror
    name = "train-labels-idx1-ubyte"
    wrong = specs[name]._replace(md5="0" * 32)
    with pytest.raises(FetchError, match="does not match the published checksum"):
        fetch_file(name, wrong, tmp_path / "raw", [str(mirror)], _cfg([]))
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_all_sources_failing_names_each_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "no-such-folder"))
    offline = f"http://127.0.0.1:{free_port()}/mnist"
    with pytest.raises(FetchError) as info:
        fetch_all(tmp_path / "raw", _cfg([offline], 2), files=dict(list(FILES.items())[:1]))
    message = str(info.value)
    assert "no-such-folder" in message and offline in message
    assert f"export {MIRROR_ENV}=" in message
    assert not any((tmp_path / "raw").iterdir())


def test_sources_order_and_blank_env():
    assert sources(_cfg(["https://a"]), {MIRROR_ENV: "/m"}) == ["/m", "https://a"]
    assert sources(_cfg(["https://a"]), {MIRROR_ENV: "  "}) == ["https://a"]


def test_already_verified_file_is_kept(tiny_mirror, tmp_path):
    mirror, specs = tiny_mirror
    fetch_all(tmp_path, _cfg([mirror.as_uri()]), files=specs)
    assert set(fetch_all(tmp_path, _cfg([]), files=specs).values()) == {"already present"}


def test_real_mnist_mirror_verifies(real_mirror, tmp_path, monkeypatch):
    """The real files (CI: ../shared/mnist via $VAELAB_MNIST_MIRROR) match the published MD5s."""
    monkeypatch.setenv(MIRROR_ENV, real_mirror.as_uri())
    used = fetch_all(tmp_path, _cfg([], 30))
    assert set(used.values()) == {real_mirror.as_uri()}
    for name, spec in FILES.items():
        assert (Path(tmp_path) / name).stat().st_size == spec.size


def _zeros_gzip(path: Path, megabytes: int) -> None:
    """A gzip of ``megabytes`` MB of zeros, written in pieces (about 1 KB per MB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    with path.open("wb") as out:
        for _ in range(megabytes):
            out.write(packer.compress(block))
        out.write(packer.flush())


def test_a_decompression_bomb_is_refused_without_inflating_it(tiny_mirror, tmp_path):
    mirror, specs = tiny_mirror
    name = "t10k-labels-idx1-ubyte"
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    _zeros_gzip(bomb / f"{name}.gz", 300)  # 300 MB inflated, ~300 KB on disk
    tracemalloc.start()
    used = fetch_file(name, specs[name], tmp_path / "raw", [str(bomb), str(mirror)], _cfg([]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert used == str(mirror)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB held while refusing the bomb"


def test_a_source_larger_than_any_real_file_is_refused(tiny_mirror, tmp_path):
    _, specs = tiny_mirror
    name = "t10k-labels-idx1-ubyte"
    big = tmp_path / "big"
    big.mkdir()
    # valid gzip that inflates to nothing: only the cap on compressed bytes stops it
    empty = gzip.compress(b"")
    (big / f"{name}.gz").write_bytes(empty * ((specs[name].size + (2 << 20)) // len(empty)))
    with pytest.raises(FetchError, match=r"more than the \d+ bytes allowed"):
        fetch_file(name, specs[name], tmp_path / "raw", [str(big)], _cfg([]))


class _Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"\x1f")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_a_trickling_server_is_given_up_at_the_deadline(tiny_mirror, tmp_path, monkeypatch):
    mirror, specs = tiny_mirror
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    slow = f"http://127.0.0.1:{server.server_address[1]}"
    name = "t10k-labels-idx1-ubyte"
    started = time.monotonic()
    try:
        used = fetch_file(name, specs[name], tmp_path, [slow, str(mirror)], _cfg([], deadline=2))
    finally:
        server.shutdown()
        server.server_close()
    assert used == str(mirror)
    assert time.monotonic() - started < 10  # per-read timeout 5 s never fires on a trickle


@pytest.mark.parametrize(
    ("mirror", "allow_http", "fragment"),
    [
        ("ftp://example.org/mnist", True, "not a usable URL"),
        ("http://example.org/mnist", False, "allow_http"),
    ],
)
def test_the_environment_mirror_is_validated_like_the_params_mirrors(
    tmp_path, mirror, allow_http, fragment
):
    with pytest.raises(FetchError, match=fragment) as info:
        fetch_all(tmp_path, _cfg([], allow_http=allow_http), environ={MIRROR_ENV: mirror})
    assert MIRROR_ENV in str(info.value)
    assert not any(tmp_path.iterdir())
