"""Get the MNIST IDX files from the first source that delivers verified bytes.

Sources are tried in order: the local mirror named by $VAELAB_MNIST_MIRROR (a folder or a
URL), then the public mirrors in params.yaml. Each file is fetched as ``<name>.gz``,
decompressed in memory and checked against the published MD5 of the IDX content before it
is written, atomically, to data/raw.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from vaelab.atomic import atomic_write
from vaelab.errors import FetchError
from vaelab.mnist import FILES, FileSpec

MIRROR_ENV = "VAELAB_MNIST_MIRROR"
_CHUNK = 1 << 16


def sources(mirrors: Sequence[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The ordered sources: the local mirror from the environment first, then ``mirrors``."""
    local = environ.get(MIRROR_ENV, "").strip()
    return ([local] if local else []) + list(mirrors)


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_source(source: str, name: str, timeout: float) -> bytes:
    if "://" not in source:
        return (Path(source) / name).read_bytes()
    url = f"{source.rstrip('/')}/{name}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                chunks.append(chunk)
                bar.update(len(chunk))
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise OSError(f"truncated: got {len(data)} of {total} bytes")
    return data


def _verified(compressed: bytes, spec: FileSpec) -> bytes:
    try:
        data = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"not a complete gzip file ({exc})") from None
    if len(data) != spec.size or md5_of(data) != spec.md5:
        raise ValueError(
            f"content does not match the published checksum (md5 {md5_of(data)}, "
            f"{len(data)} bytes; expected {spec.md5}, {spec.size} bytes)"
        )
    return data


def fetch_file(
    name: str, spec: FileSpec, dest_dir: Path, srcs: Sequence[str], timeout: float
) -> str:
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
            data = _verified(_read_source(source, f"{name}.gz", timeout), spec)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            failures.append(f"  - {source}: {exc}")
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
    mirrors: Sequence[str],
    timeout: float,
    files: Mapping[str, FileSpec] = FILES,
) -> dict[str, str]:
    """Fetch every file in ``files`` into ``dest_dir``; return {name: source used}."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    srcs = sources(mirrors)
    return {name: fetch_file(name, spec, dest, srcs, timeout) for name, spec in files.items()}
