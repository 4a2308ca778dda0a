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
    """The tar's images; damage midway keeps those before it and adds one error reference. A member
    counts as listed once the reader has gone past its data: a member cut short raises there."""
    fs, path = storage.filesystem(uri)
    refs: dict[str, ImageRef] = {}
    pending: tarfile.TarInfo | None = None
    try:
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
            for member in tar:
                _add_tar_image(refs, uri, pending)
                pending = member
            _add_tar_image(refs, uri, pending)
    except (tarfile.TarError, OSError, EOFError) as exc:
        listed = f"{len(refs)} images listed before the damage" if refs else "no image listed"
        error = error_text(uri, f"unreadable tar ({listed}; {type(exc).__name__}: {exc})")
        return [*refs.values(), ImageRef(uri, None, PurePosixPath(uri).stem, error, "unreadable")]
    return list(refs.values())


def _add_tar_image(refs: dict[str, ImageRef], uri: str, member: tarfile.TarInfo | None) -> None:
    if member is not None and member.isfile() and _is_image(member.name):
        name = storage.utf8_name(member.name)
        key = tar_member_key(name)
        refs.setdefault(key, ImageRef(uri, name, PurePosixPath(key).name))


def _list_parquet(uri: str) -> list[ImageRef]:
    """One reference per row of a Parquet list of URIs; a row without a usable `uri` is an error
    reference of its own, and a list that cannot be read is one error reference."""
    stem = PurePosixPath(uri).stem
    try:
        table = storage.read_parquet(uri)
    except Exception as exc:  # not Parquet, damaged, or unreachable: that list's error
        reason = f"cannot read as Parquet ({type(exc).__name__}: {exc})"
        return [ImageRef(uri, None, stem, error_text(uri, reason), "unreadable")]
    if "uri" not in table.column_names:
        reason = f"Parquet input has no 'uri' column (columns: {table.column_names})"
        return [ImageRef(uri, None, stem, error_text(uri, reason), "unsupported")]
    uris = table.column("uri").to_pylist()
    ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else [None] * len(uris)
    refs = []
    for row, (image_uri, image_id) in enumerate(zip(uris, ids)):
        if isinstance(image_uri, str) and image_uri:
            refs.append(
                ImageRef(image_uri, None, str(image_id) if image_id is not None else PurePosixPath(image_uri).stem)
            )
            continue
        what = "null" if image_uri is None else f"{type(image_uri).__name__} {image_uri!r}, not a path or URL"
        own_id = str(image_id) if image_id is not None else f"{stem} row {row}"
        error = error_text(uri, f"row {row}: 'uri' is {what}")
        refs.append(ImageRef(uri, None, own_id, error, "bad_container"))
    return refs


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
            refs.extend(_list_tar(source.uri))
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
