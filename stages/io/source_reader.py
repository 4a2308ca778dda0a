"""Reading one audio source as a file: a whole file, a tar member's byte range, or a Parquet row's
bytes (what stages.io.sources lists)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from stages.io.sources import Member, MissingAudioBytes
from stages.io.storage import filesystem


class SourceReader:
    """Reads a source's bytes: a whole file, a tar member's byte range, or a Parquet row. The last
    Parquet row group read is kept, so the neighbouring rows a part holds cost one read."""

    def __init__(self) -> None:
        self._group_key: tuple[str, int, str] | None = None
        self._group: pa.Array | None = None

    def read(self, uri: str, member: Member | None) -> bytes:
        with self.open(uri, member) as handle:
            return handle.read()

    @contextmanager
    def open(self, uri: str, member: Member | None) -> Iterator[BinaryIO]:
        """The source as a seekable binary file, read as it is used: a file or a tar member is never
        read whole into memory here. A Parquet row's bytes are in memory already."""
        if member is not None and member.kind == "parquet":
            yield io.BytesIO(self._row_bytes(member))
            return
        fs, path = filesystem(uri if member is None else member.container)
        with fs.open(path, "rb") as handle:
            if member is None:
                yield handle
            else:
                yield io.BufferedReader(_ByteRange(handle, member.data_offset, member.data_size))

    def _row_bytes(self, member: Member) -> bytes:
        fs, path = filesystem(member.container)
        key = (member.container, member.row_group, member.column)
        if key != self._group_key:
            with fs.open(path, "rb") as handle:
                table = pq.ParquetFile(handle).read_row_group(member.row_group, columns=[member.column])
            self._group_key, self._group = key, table.column(0).combine_chunks()
        value = self._group[member.row_in_group].as_py()
        data = value.get("bytes") if isinstance(value, dict) else value
        if data is None:
            named = (
                f" (the row names only the path {value.get('path')!r})"
                if isinstance(value, dict) and value.get("path")
                else ""
            )
            raise MissingAudioBytes(f"no audio bytes in column {member.column!r}{named}")
        return data


class _ByteRange(io.RawIOBase):
    """`size` bytes of an open file from `offset` on, as a file of their own (a tar member)."""

    def __init__(self, handle: BinaryIO, offset: int, size: int) -> None:
        self._handle = handle
        self._offset = offset
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        self._handle.seek(self._offset + self._position)
        data = self._handle.read(wanted)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
