"""Image-audio pairs read from WebDataset tar shards (KEY.jpg + KEY.flac, as sonify writes them)
or from Parquet files of image and audio bytes, a block of pairs at a time.

A file is cut into blocks of a fixed number of pairs, so a reader holds one block whatever the
file's size: a tar's members are located from its headers alone and each block's bytes are read by
range; a Parquet block reads only the row groups it overlaps. A sample that lacks its image or its
audio, or a row whose bytes are null, is a pair with an error naming the file, never dropped."""

from __future__ import annotations

import math
import tarfile
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from stages.io import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg")


class PairSourceError(ValueError):
    """A pair file that cannot be read at all: not a tar or Parquet file, or a Parquet file without
    the named columns."""


@dataclass(frozen=True)
class Pair:
    key: str
    source: str
    image: bytes | None
    audio: bytes | None
    error: str | None


@dataclass(frozen=True)
class TarSample:
    key: str
    image: tuple[int, int] | None  # (offset, size) of the member's bytes in the tar
    audio: tuple[int, int] | None


def pair_format(url: str) -> str:
    name = url.lower()
    if name.endswith(".tar"):
        return "tar"
    if name.endswith(".parquet"):
        return "parquet"
    raise PairSourceError(f"{url}: pairs are read from .tar (WebDataset) or .parquet files")


def _sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: the key is the path up to the first dot of its base name."""
    folder, _, base = member_name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def tar_samples(url: str) -> list[TarSample]:
    """The samples of a tar in member order, located from its headers (member bytes are skipped, not read)."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    fs, path = storage.filesystem(url)
    try:
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    key, extension = _sample_key(info.name)
                    members.setdefault(key, {}).setdefault(extension, (info.offset_data, info.size))
    except tarfile.TarError as exc:
        raise PairSourceError(f"{url}: not a readable tar ({exc})") from None

    def first(found: dict[str, tuple[int, int]], extensions: tuple[str, ...]) -> tuple[int, int] | None:
        return next((found[e] for e in extensions if e in found), None)

    return [TarSample(k, first(m, IMAGE_EXTENSIONS), first(m, AUDIO_EXTENSIONS)) for k, m in members.items()]


def tar_pairs(url: str, samples: list[TarSample]) -> list[Pair]:
    """The pairs of `samples` of the tar at `url`, their members' bytes read by range in one pass."""
    ranges = [r for s in samples for r in (s.image, s.audio) if r is not None]
    found = iter(storage.read_ranges(url, ranges) if ranges else [])
    pairs = []
    for sample in samples:
        image = next(found) if sample.image is not None else None
        audio = next(found) if sample.audio is not None else None
        missing = [
            f"no {what} member ({'/'.join(extensions)})"
            for what, extensions, member in (("image", IMAGE_EXTENSIONS, image), ("audio", AUDIO_EXTENSIONS, audio))
            if member is None
        ]
        error = f"{url}#{sample.key}: {'; '.join(missing)}" if missing else None
        pairs.append(Pair(sample.key, url, image, audio, error))
    return pairs


def _file_bytes_type(column_type: pa.DataType) -> pa.DataType:
    """The type of the file bytes a column holds: itself, or the `bytes` field of a struct (the
    Hugging Face Image and Audio layout)."""
    if pa.types.is_struct(column_type) and column_type.get_field_index("bytes") >= 0:
        return column_type.field("bytes").type
    return column_type


def check_parquet_columns(url: str, schema: pa.Schema, image_column: str, audio_column: str, key_column: str | None):
    """Refuses (PairSourceError) a Parquet file without the named columns, or whose image or audio
    column holds no file bytes."""
    wanted = [image_column, audio_column] + ([key_column] if key_column else [])
    absent = [c for c in wanted if c not in schema.names]
    if absent:
        raise PairSourceError(f"{url}: no column {absent} (it has {schema.names})")
    for name in (image_column, audio_column):
        found = _file_bytes_type(schema.field(name).type)
        if not (pa.types.is_binary(found) or pa.types.is_large_binary(found)):
            raise PairSourceError(
                f"{url}: column {name!r} holds {schema.field(name).type}, not file bytes "
                "(binary, or a struct with a binary `bytes` field)"
            )


def _bytes_of(column: pa.ChunkedArray) -> list[bytes | None]:
    if pa.types.is_struct(column.type):
        column = pa.chunked_array([chunk.field("bytes") for chunk in column.chunks], _file_bytes_type(column.type))
    return column.to_pylist()


def parquet_pairs(
    url: str, start: int, count: int, image_column: str, audio_column: str, key_column: str | None
) -> list[Pair]:
    """Pairs of rows [start, start + count) of a Parquet file, reading only the row groups they overlap."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        check_parquet_columns(url, parquet.schema_arrow, image_column, audio_column, key_column)
        wanted = [image_column, audio_column] + ([key_column] if key_column else [])
        groups, first_row, row = [], None, 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if row + rows > start and row < start + count:
                groups.append(group)
                first_row = row if first_row is None else first_row
            row += rows
        if not groups:
            return []
        table = parquet.read_row_groups(groups, columns=wanted).slice(start - first_row, count)
    images = _bytes_of(table.column(image_column))
    audios = _bytes_of(table.column(audio_column))
    keys = table.column(key_column).to_pylist() if key_column else [f"{url}#{start + i}" for i in range(len(images))]
    pairs = []
    for offset, (key, image, audio) in enumerate(zip(keys, images, audios)):
        missing = [name for name, value in ((image_column, image), (audio_column, audio)) if not value]
        error = f"{url}#{start + offset}: empty {' and '.join(missing)}" if missing else None
        if key is None:
            key, error = f"{url}#{start + offset}", f"{url}#{start + offset}: null {key_column}"
        pairs.append(Pair(str(key), url, image or None, audio or None, error))
    return pairs


def block_count(url: str, pairs_per_block: int, image_column: str, audio_column: str, key_column: str | None) -> int:
    """How many blocks of `pairs_per_block` pairs the file holds; a file that cannot be read as pairs
    (not a tar, or a Parquet file without the named columns of file bytes) is a PairSourceError."""
    if pair_format(url) == "tar":
        return math.ceil(len(tar_samples(url)) / pairs_per_block)
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        check_parquet_columns(url, parquet.schema_arrow, image_column, audio_column, key_column)
        return math.ceil(parquet.metadata.num_rows / pairs_per_block)


def read_block(
    url: str, block: int, pairs_per_block: int, image_column: str, audio_column: str, key_column: str | None
) -> list[Pair]:
    start = block * pairs_per_block
    if pair_format(url) == "tar":
        return tar_pairs(url, tar_samples(url)[start : start + pairs_per_block])
    return parquet_pairs(url, start, pairs_per_block, image_column, audio_column, key_column)
