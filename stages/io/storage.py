"""The one I/O helper: every path is an fsspec URL, and every write is atomic.

Local files are written under a temporary name and renamed into place. Object stores (s3, gs, ...)
make a PUT visible all at once, so they are written directly. Either way a crashed run leaves no
half-written file under a final name. A write that finds its device full (ENOSPC, or a quota:
EDQUOT) deletes its temporary file and raises `DiskFull`, which stops the run with one line naming
the folder. What the inputs are (files, Parquet rows, tar members) is stages.io.sources' concern.
"""

from __future__ import annotations

import bisect
import errno
import io
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from schemas.errors import PipelineError

# Layouts and callers of this module join URLs by the same rule.
from schemas.layout import join  # noqa: F401

TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_NAME = re.compile(rf"^{re.escape(TEMPORARY_PREFIX)}[0-9a-f]{{32}}-")


FULL_DEVICE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(PipelineError):
    """A write found no space left where it writes. Everything finished before it is kept (each
    file is whole or absent), so the same command, run again once space is freed, goes on."""


def disk_full(exc: BaseException, folder: str) -> DiskFull | None:
    """The DiskFull that `exc` means for a write into `folder`, or None when it means something else."""
    if isinstance(exc, OSError) and exc.errno in FULL_DEVICE_ERRORS:
        return DiskFull(
            f"no space left on the device holding {folder} ({exc.strerror}); free space there and run the "
            "same command again: finished work is kept"
        )
    return None


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
