"""Gallery media: a few samples' members read from their WebDataset shard by key, and the
thumbnails shown in the page.

A shard is a plain tar, so samples are found by walking its headers: each header gives its
member's size, and the walk seeks past the data of members it does not want. On a random-access
fsspec file that reads the headers plus the wanted members, not the whole shard, and the walk stops
once every wanted sample has been read. Python's tarfile reads PAX and GNU long-name headers too.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Collection
from typing import BinaryIO

from PIL import Image, ImageOps

THUMBNAIL_QUALITY = 85


def member_key(name: str) -> tuple[str, str]:
    """(sample key, extension) of a member name, split at the first dot of its file name as
    WebDataset does."""
    folder, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension


def read_samples(shard: BinaryIO, keys: Collection[str]) -> dict[str, dict[str, bytes]]:
    """The members of each of `keys` found in the shard, by extension. A key missing from the
    shard is missing from the result."""
    wanted = set(keys)
    found: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=shard, mode="r:") as tar:
        for member in tar:
            key, extension = member_key(member.name)
            if key not in wanted:
                if len(found) == len(wanted):
                    break
                continue
            if member.isfile():
                found.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return found


def thumbnail_jpeg(data: bytes, max_side: int) -> bytes:
    """The image upright (EXIF orientation), in RGB, scaled to fit `max_side`, as JPEG."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGB", image.size, "white")
            background.paste(image, mask=image.getchannel("A"))
            image = background
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
