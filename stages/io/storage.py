"""The one I/O helper: every path is an fsspec URL, and every write is atomic.

Local files are written under a temporary name and renamed into place. Object stores (s3, gs, ...)
make a PUT visible all at once, so they are written directly. Either way a crashed run leaves no
half-written file under a final name. A write that finds its device full (ENOSPC, or a quota:
EDQUOT) deletes its temporary file and raises `DiskFull`, which stops the run with one line naming
the folder. What the inputs are (files, Parquet rows, tar members) is stages.io.sources' concern.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from urllib.parse import quote, unquote_to_bytes

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

# Layouts and callers of this module join URLs by the same rule.
from schemas.layout import join  # noqa: F401
from stages.io.disk_full import DiskFull as DiskFull
from stages.io.disk_full import disk_full

TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_NAME = re.compile(rf"^{re.escape(TEMPORARY_PREFIX)}[0-9a-f]{{32}}-")


# A local name that is not valid UTF-8 (Linux allows any bytes but `/` and NUL) cannot be stored in
# an Arrow string or JSON. Such a path is stored as a `file://` URL whose bytes are percent-encoded
# (RFC 8089), and `filesystem` decodes it back to the same bytes; other local paths stay plain.
LOCAL_URL_PREFIX = "file://"


def utf8_name(name: str) -> str:
    """`name` where it is valid UTF-8; else its bytes percent-encoded (`/` kept), so that a name
    the file system or a tar handed back with surrogate escapes can be stored and shown."""
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        return quote(os.fsencode(name), safe="/")


def local_url(path: str) -> str:
    """The URL a local path is stored under: the path itself, or a percent-encoded `file://` URL
    when the path is not valid UTF-8."""
    named = utf8_name(path)
    return path if named == path else LOCAL_URL_PREFIX + named


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    if url.startswith(LOCAL_URL_PREFIX):
        return fsspec.filesystem("file"), os.fsdecode(unquote_to_bytes(url[len(LOCAL_URL_PREFIX) :]))
    # Ray workers write files that the driver lists right after, and the other way round. A
    # listing cached by one process (s3fs, gcsfs and others cache them) would hide the files
    # another process wrote since, so listings are never cached.
    return url_to_fs(url, use_listings_cache=False)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL a user would pass for `path` on `fs` (local paths stay plain paths, see local_url)."""
    return local_url(path) if is_local(fs) else fs.unstrip_protocol(path)


def resolved_url(url: str) -> str:
    """One spelling of a location, for comparing settings: a local path made absolute, with links
    resolved and no trailing slash (`dir/`, `./dir` and `/abs/dir` are one folder); other URLs with
    their protocol and without a trailing slash. Glob characters are kept as they are."""
    fs, path = filesystem(url)
    if is_local(fs):
        return os.path.realpath(os.path.expanduser(path))
    return fs.unstrip_protocol(path.rstrip("/"))


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


def sha256_of(url: str, block_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks so that a large file is never held whole."""
    digest = hashlib.sha256()
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


# Ranges this close are read as one: the tar header (512 bytes) between neighbouring members of a
# pack costs less to read than another request.
COALESCE_GAP_BYTES = 4096


def coalesce_ranges(ranges: list[tuple[int, int]], gap: int = COALESCE_GAP_BYTES) -> list[tuple[int, int]]:
    """(offset, size) ranges merged where they overlap or lie at most `gap` bytes apart, sorted:
    the ranges `read_ranges` requests."""
    merged: list[list[int]] = []
    for offset, size in sorted(ranges):
        if merged and offset - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], offset + size)
        else:
            merged.append([offset, offset + size])
    return [(start, end - start) for start, end in merged]


def read_ranges(url: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each (offset, size) range of a file, in the order given. Near ranges are
    coalesced, and each coalesced range is one `cat_ranges` request (a ranged GET on object
    stores); fsspec's cat_file reads exactly the range asked, with no read-ahead or block cache."""
    fs, path = filesystem(url)
    spans = coalesce_ranges(ranges)
    blobs = fs.cat_ranges([path] * len(spans), [s for s, _ in spans], [s + n for s, n in spans], on_error="raise")
    starts = [s for s, _ in spans]
    out = []
    for offset, size in ranges:
        index = bisect.bisect_right(starts, offset) - 1
        local = offset - spans[index][0]
        data = blobs[index][local : local + size]
        if len(data) != size:
            raise ValueError(f"{url} ends before byte {offset + size}, the end of a range asked of it")
        out.append(data)
    return out


class _Target:
    """A file being written, whose failed writes on a full device raise DiskFull naming its folder."""

    def __init__(self, handle, folder: str) -> None:
        self._handle = handle
        self._folder = folder

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise disk_full(exc, self._folder) or exc from None

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            raise disk_full(exc, self._folder) or exc from None

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


@contextmanager
def open_for_writing(url: str) -> Iterator[BinaryIO]:
    """A file to write in pieces, that appears under `url`, whole, only if the block ends without an
    exception: a local file goes to a temporary name renamed into place at the end, and deleted on
    an exception; an object store's upload is committed at the end, and discarded on an exception."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    folder = full_url(fs, parent)
    try:
        if is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            temporary = f"{parent}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
            handle = fs.open(temporary, "wb")
            try:
                yield _Target(handle, folder)
                handle.close()
                fs.mv(temporary, path)
            except Exception:
                try:
                    handle.close()
                except OSError:
                    pass  # closing flushes what a full device already refused; the temporary goes anyway
                if fs.exists(temporary):
                    fs.rm(temporary)
                raise
        else:
            handle = fs.open(path, "wb")
            try:
                yield _Target(handle, folder)
            except Exception:
                # fsspec's buffered files commit on close: an upload cut short is thrown away instead.
                discard = getattr(handle, "discard", None)
                if discard is not None:
                    discard()
                raise
            handle.close()
    except OSError as exc:
        raise disk_full(exc, folder) or exc from None


def write_bytes(url: str, data: bytes) -> None:
    with open_for_writing(url) as handle:
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


def parquet_row_groups(url: str) -> list[int]:
    """Rows of each row group, from the file's footer."""
    fs, path = filesystem(url)
    metadata = pq.read_metadata(path, filesystem=fs)
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def read_row_group(url: str, group: int, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).read_row_group(group, columns=columns)


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
