"""Licence and attribution of the pool's sources: read from pool.metadata and the Parquet sources'
own columns when a pool run starts, put in each part's clips file as it is written, and put in the
clips files of earlier parts whose values changed.

The join happens at pool time, into the clips table, so that sonify, the report and DuckDB queries
read one table. Metadata is not part of any source's fingerprint: a change to it rewrites only the
clips files whose values change (a few columns of a small file), never the audio, packs,
embeddings or index, so nothing is standardized or embedded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from schemas import POOL_CLIPS, make_table
from schemas.layout import PoolLayout
from schemas.pool_config import PoolConfig
from stages.io import storage
from stages.io.sources import SourceFile
from stages.licences.metadata import CREDIT_FIELDS, NO_CREDIT, Credit, match_sources, read_metadata
from stages.licences.parquet_columns import parquet_credits

# The key column of a pool.metadata file.
SOURCE_KEY = "source"


@dataclass(frozen=True)
class SourceCredits:
    """The credit of every source some metadata names, and the metadata keys that named none."""

    by_uri: Mapping[str, Credit]
    unmatched_keys: list[str]

    def columns(self, uris: Iterable[str]) -> dict[str, list]:
        """The clips table's credit columns for rows of these source URIs (null where none is known)."""
        credits = [self.by_uri.get(uri, NO_CREDIT).as_row() for uri in uris]
        return {name: [c[name] for c in credits] for name in CREDIT_FIELDS}

    def fill(self, rows: pa.Table) -> pa.Table:
        """`rows` (with source_uri and the credit columns) with the credit columns set from the metadata."""
        values = self.columns(rows.column("source_uri").to_pylist())
        for name in CREDIT_FIELDS:
            field = POOL_CLIPS.field(name)
            rows = rows.set_column(rows.schema.get_field_index(name), field, pa.array(values[name], field.type))
        return rows


def source_credits(pool: PoolConfig, sources: list[SourceFile], stored_uris: Iterable[str]) -> SourceCredits:
    """Credits of the listed and the stored sources: a pool.metadata row where one matches the source
    (stages.licences.metadata.match_sources), else the Parquet row's own columns (pool.parquet). A
    source no longer listed gets only what pool.metadata says of it."""
    metadata = read_metadata(pool.metadata, SOURCE_KEY)
    matched, unmatched = match_sources(metadata, {s.uri for s in sources} | set(stored_uris))
    own = parquet_credits(sources, pool.parquet.metadata_columns())
    return SourceCredits({**own, **matched}, unmatched)


def relabel_parts(paths: PoolLayout, credits: SourceCredits, skip: set[str]) -> int:
    """Rewrites the clips file of every finished part (except those in `skip`, just written) whose
    credit columns differ from what the metadata now says; returns how many it rewrote. The clips
    file is replaced whole and atomically, so the part stays complete throughout."""
    rewritten = 0
    for url in storage.list_files(paths.clips_folder(), ".parquet"):
        if storage.file_stem(url) in skip:
            continue
        stored = storage.read_parquet(url, columns=["source_uri", *CREDIT_FIELDS])
        wanted = credits.columns(stored.column("source_uri").to_pylist())
        if all(stored.column(name).to_pylist() == wanted[name] for name in CREDIT_FIELDS):
            continue
        storage.write_parquet(url, make_table(POOL_CLIPS, credits.fill(storage.read_parquet(url))))
        rewritten += 1
    return rewritten
