"""Tars of samples, written byte-stable: the shards' WebDataset tars and the pool's mix-rate packs.

A sample is the members sharing a key (`KEY.jpg`, `KEY.flac`, `KEY.json`). Headers are fixed
(mtime 0, owner 0, mode 0444), so the same samples always give the same bytes. Member names longer
than a ustar header holds (100 bytes) get a POSIX (pax) extended header, which GNU tar, Python's
tarfile and the WebDataset readers all understand; shorter names give plain ustar headers, so a
member's data then starts one 512-byte header after the end of the previous member.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from typing import BinaryIO

HEADER_BYTES = tarfile.BLOCKSIZE


class TarWriter:
    """Writes samples one by one to a binary file, and says where each member's bytes went."""

    def __init__(self, handle: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, key: str, members: dict[str, bytes]) -> dict[str, tuple[int, int]]:
        """Writes one sample's members in sorted extension order; returns member name -> (offset,
        size) of its bytes in the tar."""
        if "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
        ranges = {}
        for extension in sorted(members):
            payload = members[extension]
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(payload), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(payload))
            # addfile leaves the offset past the member's data, padded to whole blocks.
            padded = -(-len(payload) // HEADER_BYTES) * HEADER_BYTES
            ranges[info.name] = (self._tar.offset - padded, len(payload))
        return ranges

    def close(self) -> None:
        """Writes the end-of-archive blocks; the file itself stays open."""
        self._tar.close()


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar of samples in the given order; each sample's members in sorted extension order."""
    buffer = io.BytesIO()
    writer = TarWriter(buffer)
    for key, members in samples:
        writer.add(key, members)
    writer.close()
    return buffer.getvalue()


def member_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """Member name -> (offset, size) of its bytes in the tar `data`, as tarfile reads them back."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {info.name: (info.offset_data, info.size) for info in tar}


def member_name_before(header: bytes) -> str:
    """The name in the ustar header that ends where a member's data starts (its checksum checked,
    so bytes that are not a header raise tarfile.HeaderError)."""
    return tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape").name
