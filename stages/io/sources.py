"""Input sources: URLs and globs expanded to files, and audio sources that are files, rows of
Parquet files and members of tar files (`expand_audio_sources`).

A row or member is a source of its own, named `<container URL>#<key>`, and carries where it sits in
its container (`Member`), so a worker reads exactly its bytes (stages.io.source_reader).
"""

from __future__ import annotations

import logging
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.errors import BadInput
from stages.io.storage import filesystem, full_url, utf8_name

log = logging.getLogger(__name__)

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Member:
    """Where a source that is not a file of its own sits: a Parquet row or a tar member."""

    container: str  # URL of the Parquet or tar file
    kind: str  # "parquet" or "tar"
    key: str  # the row's id or the member's name; the source's URI is "<container>#<key>"
    column: str | None = None  # parquet: the column holding the audio
    row_group: int | None = None  # parquet: the row group holding the row...
    row_in_group: int | None = None  # ...and the row's position in it
    data_offset: int | None = None  # tar: where the member's bytes start...
    data_size: int | None = None  # ...and how many there are

    @property
    def position(self) -> int:
        """Order within the container: a part then holds neighbouring rows, read together."""
        if self.kind == "tar":
            return self.data_offset
        return (self.row_group << 32) + self.row_in_group


@dataclass(frozen=True)
class SourceFile:
    """One audio source found by expanding a source pattern: a file, a Parquet row or a tar member
    (`member` set), or a generated sound (`generation` set: how it was made, a GENERATION struct's
    fields). `error` is set when it cannot be read, and `error_kind` names its kind."""

    uri: str
    size: int | None
    fingerprint: str | None
    error: str | None = None
    member: Member | None = None
    error_kind: str | None = None
    generation: dict[str, Any] | None = None

    @property
    def order(self) -> tuple[str, int]:
        """Sort key: by URL, and a container's rows or members in the order they are stored."""
        if self.member is None:
            return (self.uri, -1)
        return (self.member.container, self.member.position)


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
            found.setdefault(
                pattern, SourceFile(pattern, None, None, f"cannot open {pattern}: {exc}", error_kind="unreadable")
            )
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
            found.setdefault(
                pattern,
                SourceFile(
                    pattern, None, None, f"cannot read {pattern}: {type(exc).__name__}: {exc}", error_kind="unreadable"
                ),
            )
            continue
        if info.get("type") == "directory":
            reason = f"{pattern} is a folder; use a glob such as {pattern.rstrip('/')}/*.wav"
            found.setdefault(pattern, SourceFile(pattern, None, None, reason, error_kind="not_a_file"))
            continue
        uri = full_url(fs, path)
        found.setdefault(uri, SourceFile(uri, info.get("size"), fingerprint_of(info)))
    return sorted(found.values(), key=lambda s: s.uri), empty_globs


def generated_sources(generations: dict[str, dict[str, Any]]) -> list[SourceFile]:
    """The sources of generated sounds, by URL, each carrying how it was made. A recorded sound
    whose file is gone is a source with its error, so the pool shows the loss."""
    found = []
    for url, generation in sorted(generations.items()):
        fs, path = filesystem(url)
        uri = full_url(fs, path)
        try:
            info = fs.info(path)
        except Exception as exc:
            reason = f"cannot read generated sound {url}: {type(exc).__name__}: {exc}"
            found.append(SourceFile(uri, None, None, reason, error_kind="unreadable", generation=generation))
            continue
        found.append(SourceFile(uri, info.get("size"), fingerprint_of(info), generation=generation))
    return found


# Members of a tar that are read as audio, by extension; others (json, txt, cls, images) are the
# metadata of a WebDataset sample and are counted in the log, not read.
AUDIO_MEMBER_EXTENSIONS = frozenset(
    "wav wave flac mp3 ogg oga opus aif aiff aifc au snd w64 caf m4a m4b mp4 m4v aac adts webm weba "
    "mkv mka mov 3gp wma wmv asf avi amr ac3 eac3 mp2 alac".split()
)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


@dataclass(frozen=True)
class ParquetLayout:
    """Where a Parquet file of audio keeps each row's bytes and its id."""

    audio_column: str  # binary, or a struct with a binary `bytes` field (Hugging Face Audio)
    id_column: str | None  # a column (or `column.field`) of unique values; None: the row number


class MissingAudioBytes(BadInput):
    """A Parquet row whose audio column holds no bytes."""

    kind = "empty"


def expand_audio_sources(patterns: list[str], parquet: ParquetLayout) -> tuple[list[SourceFile], list[str]]:
    """`expand_sources`, with every Parquet file's rows and every tar's audio members listed as
    sources of their own. A row or member's fingerprint is its container's, so a changed container
    is read again whole. A container that cannot be listed is one source with its error."""
    files, empty_globs = expand_sources(patterns)
    sources: list[SourceFile] = []
    for source in files:
        name = source.uri.lower()
        if source.error is not None:
            sources.append(source)
        elif name.endswith(".parquet"):
            sources.extend(_parquet_rows(source, parquet))
        elif name.endswith(".tar"):
            sources.extend(_tar_members(source))
        elif name.endswith(COMPRESSED_TAR_SUFFIXES):
            sources.append(
                _failed(
                    source,
                    "bad_container",
                    "container: a compressed tar; audio tars are read as plain .tar files (WebDataset's layout)",
                )
            )
        else:
            sources.append(source)
    return sorted(sources, key=lambda s: s.order), empty_globs


def _failed(source: SourceFile, kind: str, reason: str) -> SourceFile:
    return SourceFile(source.uri, source.size, source.fingerprint, reason, source.member, kind)


def _member_source(container: SourceFile, member: Member, size: int | None, error: str | None = None) -> SourceFile:
    """A row or member as a source; its only possible listing error is a bad_container one."""
    return SourceFile(
        f"{container.uri}#{member.key}", size, container.fingerprint, error, member, "bad_container" if error else None
    )


def _column_values(table: pa.Table) -> pa.Array:
    """The one column of `table`, descending into the struct that a `column.field` read returns."""
    values = table.column(0).combine_chunks()
    while pa.types.is_struct(values.type):
        values = values.field(0)
    return values


def _parquet_rows(source: SourceFile, layout: ParquetLayout) -> list[SourceFile]:
    fs, path = filesystem(source.uri)
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            problem = _audio_column_problem(parquet.schema_arrow, layout)
            if problem:
                return [_failed(source, "bad_container", f"container: {problem}")]
            ids: list[tuple[int, int, str | None]] = []  # row group, row in it, id
            for group in range(parquet.num_row_groups):
                if layout.id_column is None:
                    start, rows = len(ids), parquet.metadata.row_group(group).num_rows
                    ids.extend((group, row, str(start + row)) for row in range(rows))
                else:
                    values = _column_values(parquet.read_row_group(group, columns=[layout.id_column])).to_pylist()
                    ids.extend((group, row, None if value is None else str(value)) for row, value in enumerate(values))
    except Exception as exc:  # a damaged or unreachable file is that file's error row
        return [_failed(source, "unreadable", f"cannot read {source.uri} as Parquet: {type(exc).__name__}: {exc}")]

    counts = Counter(key for _, _, key in ids)
    rows = []
    for index, (group, row, key) in enumerate(ids):
        error = None
        if key is None:
            key = f"row {index} (null id)"
            error = f"container: row {index} has a null {layout.id_column!r}; ids must be set and unique"
        elif counts[key] > 1:
            error = f"container: {counts[key]} rows share this {layout.id_column!r}; ids must be unique"
            key = f"{key} (row {index})"
        member = Member(source.uri, "parquet", key, column=layout.audio_column, row_group=group, row_in_group=row)
        rows.append(_member_source(source, member, None, error))
    return rows


def _audio_column_problem(schema: pa.Schema, layout: ParquetLayout) -> str | None:
    names = ", ".join(schema.names)
    if schema.get_field_index(layout.audio_column) < 0:
        return (
            f"the Parquet file has no column {layout.audio_column!r} (its columns: {names}); "
            "set pool.parquet.audio_column"
        )
    kind = schema.field(layout.audio_column).type
    holds_bytes = kind.field("bytes").type if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 else kind
    if not (pa.types.is_binary(holds_bytes) or pa.types.is_large_binary(holds_bytes)):
        return f"the Parquet column {layout.audio_column!r} is {kind}, not binary or a struct with binary `bytes`"
    if layout.id_column is not None and schema.get_field_index(layout.id_column.split(".", 1)[0]) < 0:
        return (
            f"the Parquet file has no id column {layout.id_column!r} (its columns: {names}); set pool.parquet.id_column"
        )
    return None


def _tar_members(source: SourceFile) -> list[SourceFile]:
    fs, path = filesystem(source.uri)
    members: list[SourceFile] = []
    names: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    try:
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                extension = base.rsplit(".", 1)[-1].lower() if "." in base else ""
                if not info.isfile() or extension not in AUDIO_MEMBER_EXTENSIONS:
                    skipped[(extension or "(none)") if info.isfile() else "(not a file)"] += 1
                    continue
                key = utf8_name(info.name)
                names[key] += 1
                member = Member(source.uri, "tar", key, data_offset=info.offset_data, data_size=info.size)
                members.append(_member_source(source, member, info.size))
    except Exception as exc:  # damage ends the listing; the members before it stay sources
        members.append(
            _failed(
                source,
                "unreadable",
                f"cannot read {source.uri} as a tar past {len(members)} audio members: {type(exc).__name__}: {exc}",
            )
        )
    if skipped:
        log.info("%s: %s members are not audio and are not read", source.uri, dict(sorted(skipped.items())))
    if not members:
        others = ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items())) or "none"
        return [
            _failed(source, "bad_container", f"container: the tar holds no audio members (other members: {others})")
        ]
    repeated = {name for name, count in names.items() if count > 1}
    if not repeated:
        return members
    # Tar readers keep the last of members that share a name; which one a user meant is unknown, so
    # the name becomes one error source.
    kept: dict[str, SourceFile] = {}
    for m in members:
        if m.member is not None and m.member.key in repeated:
            m = _failed(
                m, "bad_container", f"container: the tar holds {names[m.member.key]} members named {m.member.key!r}"
            )
        kept.setdefault(m.uri, m)
    return list(kept.values())
