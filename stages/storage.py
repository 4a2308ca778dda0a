"""The one I/O helper: every path is an fsspec URL, and every write is atomic.

Local files are written under a temporary name and renamed into place. Object stores (s3, gs, ...)
make a PUT visible all at once, so they are written directly. Either way a crashed run leaves no
half-written file under a final name.
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

GLOB_CHARS = set("*?[")
TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_NAME = re.compile(rf"^{re.escape(TEMPORARY_PREFIX)}[0-9a-f]{{32}}-")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    # Ray workers write files that the driver lists right after, and the other way round. A
    # listing cached by one process (s3fs, gcsfs and others cache them) would hide the files
    # another process wrote since, so listings are never cached.
    return url_to_fs(url, use_listings_cache=False)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL a user would pass for `path` on `fs` (local paths stay plain paths)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        temporary = f"{parent}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
        with fs.open(temporary, "wb") as handle:
            handle.write(data)
        fs.mv(temporary, path)
    else:
        with fs.open(path, "wb") as handle:
            handle.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode())


def write_parquet(url: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes(url, buffer.getvalue())


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(url)
    return pq.read_table(path, columns=columns, filesystem=fs)


def parquet_rows(url: str) -> int:
    """Row count from the file's footer, without reading its data."""
    fs, path = filesystem(url)
    return pq.read_metadata(path, filesystem=fs).num_rows


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def file_stem(url: str) -> str:
    """The name of a file without its folder and extension: a part, chunk or shard name."""
    return url.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def remove_temporaries(folder_urls: list[str]) -> int:
    """Deletes, directly inside each folder, the temporary files that writes killed midway left.
    They are never listed here, but a user's own glob (`shards/*.tar` in Python) would find them.
    Only names this module makes are touched, in folders the pipeline writes."""
    removed = 0
    for url in folder_urls:
        fs, path = filesystem(url)
        if not is_local(fs) or not fs.isdir(path):
            continue
        for leftover in fs.ls(path, detail=False):
            if TEMPORARY_NAME.match(leftover.rsplit("/", 1)[-1]):
                fs.rm(leftover)
                removed += 1
    return removed


def list_files(folder_url: str, suffix: str) -> list[str]:
    """URLs of the files directly inside a folder whose names end in `suffix`, sorted. Temporary
    files left by an interrupted write are never listed."""
    fs, path = filesystem(folder_url)
    if not fs.exists(path):
        return []
    names = [p for p in fs.ls(path, detail=False) if p.endswith(suffix) and not p.rsplit("/", 1)[-1].startswith(".")]
    return sorted(full_url(fs, p) for p in names)


@dataclass(frozen=True)
class SourceFile:
    """One input file found by expanding a source pattern; `error` is set when it cannot be read."""

    uri: str
    size: int | None
    fingerprint: str | None
    error: str | None = None


def fingerprint_of(info: dict[str, Any]) -> str:
    """Cheap change detector: the store's ETag or checksum when it has one, else size and mtime."""
    for key in ("ETag", "etag", "md5Hash", "checksum"):
        if info.get(key):
            return f"{key.lower()}:{str(info[key]).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    return f"size:{info.get('size')}:mtime:{mtime}"


def expand_sources(patterns: list[str]) -> tuple[list[SourceFile], list[str]]:
    """Expand URLs and globs to files. Returns the files (unreadable literal URLs included, with their
    error) and the glob patterns that matched nothing."""
    found: dict[str, SourceFile] = {}
    empty_globs: list[str] = []
    for pattern in patterns:
        try:
            fs, path = filesystem(pattern)
        except Exception as exc:  # an unknown protocol or a malformed URL is that source's error
            found.setdefault(pattern, SourceFile(pattern, None, None, f"cannot open {pattern}: {exc}"))
            continue
        if GLOB_CHARS & set(path):
            matches = fs.glob(path, detail=True)
            files = {p: i for p, i in matches.items() if i.get("type") != "directory"}
            if not files:
                empty_globs.append(pattern)
            for p, info in sorted(files.items()):
                uri = full_url(fs, p)
                found.setdefault(uri, SourceFile(uri, info.get("size"), fingerprint_of(info)))
            continue
        try:
            info = fs.info(path)
        except Exception as exc:
            found.setdefault(pattern, SourceFile(pattern, None, None, f"cannot read {pattern}: {type(exc).__name__}: {exc}"))
            continue
        if info.get("type") == "directory":
            found.setdefault(pattern, SourceFile(pattern, None, None, f"{pattern} is a folder; use a glob such as {pattern.rstrip('/')}/*.wav"))
            continue
        uri = full_url(fs, path)
        found.setdefault(uri, SourceFile(uri, info.get("size"), fingerprint_of(info)))
    return sorted(found.values(), key=lambda s: s.uri), empty_globs
