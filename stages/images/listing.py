"""Listing input images: files, WebDataset tars and Parquet lists of URIs, each image a reference
with a stable id. An input that cannot be listed is a reference carrying its error."""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

from stages.errors import error_text
from stages.io import storage
from stages.io.sources import expand_sources

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class ImageRef:
    uri: str
    member: str | None  # the member inside a tar, else None
    own_id: str  # the source's own id: tar key, Parquet image_id, or file stem
    error: str | None = None
    error_kind: str | None = None

    @property
    def display(self) -> str:
        return f"{self.uri}#{self.member}" if self.member else self.uri


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def tar_member_key(member_name: str) -> str:
    """WebDataset's key of a tar member: its path up to the first dot of the file name."""
    folder, _, base = member_name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def _list_tar(uri: str) -> list[ImageRef]:
    fs, path = storage.filesystem(uri)
    refs: dict[str, ImageRef] = {}
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and _is_image(member.name):
                key = tar_member_key(member.name)
                refs.setdefault(key, ImageRef(uri, member.name, PurePosixPath(key).name))
    return list(refs.values())


def _list_parquet(uri: str) -> list[ImageRef]:
    table = storage.read_parquet(uri)
    if "uri" not in table.column_names:
        reason = f"Parquet input has no 'uri' column (columns: {table.column_names})"
        return [ImageRef(uri, None, PurePosixPath(uri).stem, error_text(uri, reason), "unsupported")]
    uris = table.column("uri").to_pylist()
    ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else [None] * len(uris)
    return [ImageRef(u, None, str(i) if i is not None else PurePosixPath(u).stem) for u, i in zip(uris, ids)]


def list_images(patterns: list[str]) -> list[ImageRef]:
    """Every image the patterns name, in a stable order. Unreadable or unsupported inputs become
    references carrying an error, so they are counted rather than lost."""
    sources, _ = expand_sources(patterns)
    refs: list[ImageRef] = []
    for source in sources:
        name = source.uri.lower()
        if source.error:
            refs.append(ImageRef(source.uri, None, PurePosixPath(source.uri).stem, source.error, source.error_kind))
        elif name.endswith(".tar"):
            try:
                refs.extend(_list_tar(source.uri))
            except (tarfile.TarError, OSError) as exc:
                error = error_text(source.uri, f"unreadable tar ({exc})")
                refs.append(ImageRef(source.uri, None, PurePosixPath(source.uri).stem, error, "unreadable"))
        elif name.endswith(".parquet"):
            refs.extend(_list_parquet(source.uri))
        elif _is_image(name):
            refs.append(ImageRef(source.uri, None, PurePosixPath(source.uri).stem))
        else:
            error = error_text(source.uri, "unsupported input (expected jpg, png, webp, .tar or .parquet)")
            refs.append(ImageRef(source.uri, None, PurePosixPath(source.uri).stem, error, "unsupported"))
    return refs


def assign_image_ids(refs: list[ImageRef]) -> list[str]:
    """The source's own id where it is unique; a stable hash of the URI (and member) where ids
    collide, so that no two images share a key. A reference listed more than once (a Parquet list
    naming a URI twice) hashes with its occurrence number after the first."""
    counts = Counter(r.own_id for r in refs)
    seen: Counter[str] = Counter()
    ids = []
    for ref in refs:
        if counts[ref.own_id] == 1:
            ids.append(ref.own_id)
            continue
        occurrence = seen[ref.display]
        seen[ref.display] += 1
        key = ref.display if occurrence == 0 else f"{ref.display}\0{occurrence}"
        ids.append(hashlib.sha1(key.encode()).hexdigest()[:16])
    return ids
