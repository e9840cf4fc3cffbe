"""Get the MNIST IDX files from the first source that delivers verified bytes.

Sources are tried in order: the local mirror named by $VAELAB_MNIST_MIRROR (a folder or a
URL), then the public mirrors in params.yaml. Each file is fetched as ``<name>.gz``, streamed
with a cap on the compressed bytes and an overall deadline, inflated no further than the
published size, and checked against the published MD5 of the IDX content before it is
written, atomically, to data/raw. A source that fails in any way is skipped for the next,
and the final error lists what each source did.
"""

from __future__ import annotations

import os
import time
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from vaelab.core.atomic import atomic_write
from vaelab.core.errors import FetchError, cause, redact
from vaelab.core.params import Fetch, check_mirror
from vaelab.sources.files import FILES, FileSpec, md5_of

MIRROR_ENV = "VAELAB_MNIST_MIRROR"
_CHUNK = 1 << 16
_GZIP_SLACK = 1 << 20  # gzip's worst case adds a few bytes per 16 KiB block and a header


class SourceError(Exception):
    """This source cannot deliver this file; the next one is tried."""


def sources(cfg: Fetch, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The ordered sources: the local mirror from the environment first, then the params'.

    The environment's mirror is held to the same rules as ``fetch.mirrors`` (a folder, or a
    file://, https:// or, with ``fetch.allow_http``, http:// URL).
    """
    local = environ.get(MIRROR_ENV, "").strip()
    if local and "://" in local:
        try:
            check_mirror(local, cfg.allow_http)
        except ValueError as exc:
            raise FetchError(f"${MIRROR_ENV}: {exc}") from None
    return ([local] if local else []) + list(cfg.mirrors)


def _chunks(source: str, name: str, cfg: Fetch, limit: int) -> Iterator[bytes]:
    """The bytes of ``source/name`` in chunks, refusing more than ``limit`` bytes or more
    than ``cfg.deadline`` seconds in all."""
    deadline = time.monotonic() + cfg.deadline
    if "://" in source:
        url = f"{source.rstrip('/')}/{name}"
        handle = urllib.request.urlopen(url, timeout=cfg.timeout)
        total = int(handle.headers.get("Content-Length") or 0) or None
        if total is not None and total > limit:
            handle.close()
            raise SourceError(f"announces {total} bytes, more than the {limit} allowed")
        read = handle.read1  # returns after one receive: a trickle cannot outlast the deadline
    else:
        handle = (Path(source) / name).open("rb")
        total = None
        read = handle.read
    received = 0
    with handle, tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
        while chunk := read(_CHUNK):
            received += len(chunk)
            if received > limit:
                raise SourceError(f"more than the {limit} bytes allowed for this file")
            if time.monotonic() > deadline:
                raise SourceError(f"not complete after {cfg.deadline:g} s (fetch.deadline)")
            bar.update(len(chunk))
            yield chunk
    if total is not None and received != total:
        raise SourceError(f"truncated: got {received} of {total} bytes")


def _inflate(chunks: Iterator[bytes], spec: FileSpec) -> bytes:
    """Decompress gzip members as they stream in, never past the published size + 1."""
    out, size, members = [], 0, 0
    inflater, fed = zlib.decompressobj(wbits=31), False
    try:
        for chunk in chunks:
            data = chunk
            while data:
                fed = True
                piece = inflater.decompress(data, spec.size + 1 - size)
                out.append(piece)
                size += len(piece)
                if size > spec.size:
                    raise SourceError(f"inflates to more than the published {spec.size} bytes")
                if inflater.eof:  # a further gzip member may follow
                    members += 1
                    data = inflater.unused_data
                    inflater, fed = zlib.decompressobj(wbits=31), False
                else:
                    data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise SourceError(f"not a complete gzip file ({exc})") from None
    if fed or not members:
        raise SourceError("not a complete gzip file (truncated)")
    return b"".join(out)


def _verified(data: bytes, spec: FileSpec) -> bytes:
    if len(data) != spec.size or md5_of(data) != spec.md5:
        raise SourceError(
            f"content does not match the published checksum (md5 {md5_of(data)}, "
            f"{len(data)} bytes; expected {spec.md5}, {spec.size} bytes)"
        )
    return data


def fetch_file(name: str, spec: FileSpec, dest_dir: Path, srcs: Sequence[str], cfg: Fetch) -> str:
    """Write ``dest_dir/name`` from the first source that delivers it verified; return it."""
    target = dest_dir / name
    if (
        target.is_file()
        and target.stat().st_size == spec.size
        and md5_of(target.read_bytes()) == spec.md5
    ):
        return "already present"
    failures = []
    for source in srcs:
        try:
            chunks = _chunks(source, f"{name}.gz", cfg, limit=spec.size + _GZIP_SLACK)
            data = _verified(_inflate(chunks, spec), spec)
        except SourceError as exc:
            failures.append(f"  - {redact(source)}: {exc}")
            continue
        except Exception as exc:  # a broken source of any kind (cut stream, bad URL): the next
            failures.append(f"  - {redact(source)}: {cause(exc)}")
            continue
        with atomic_write(target) as handle:
            handle.write(data)
        return source
    tried = "\n".join(failures) or "  (no source configured)"
    raise FetchError(
        f"could not get a verified copy of {name} from any source:\n{tried}\n"
        f"Point the stage at a local copy of the four MNIST .gz files: "
        f"export {MIRROR_ENV}=/absolute/path/to/folder (or a URL) and re-run `dvc repro`."
    )


def fetch_all(
    dest_dir: str | Path,
    cfg: Fetch,
    files: Mapping[str, FileSpec] = FILES,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """Fetch every file in ``files`` into ``dest_dir``; return {name: source used}."""
    dest = Path(dest_dir)
    srcs = sources(cfg, environ)
    dest.mkdir(parents=True, exist_ok=True)
    return {name: fetch_file(name, spec, dest, srcs, cfg) for name, spec in files.items()}
