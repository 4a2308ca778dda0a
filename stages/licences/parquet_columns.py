"""Credits that Parquet audio sources carry in columns of their own rows (pool.parquet.license_column
and its siblings), read once per Parquet file for the rows the listing found."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import pyarrow.parquet as pq

from stages.io import storage
from stages.io.sources import SourceFile
from stages.licences.metadata import METADATA_COLUMNS, Credit, MetadataError


def parquet_credits(sources: list[SourceFile], columns: Mapping[str, str]) -> dict[str, Credit]:
    """source URI -> credit of every Parquet-row source, from the columns `columns` names (a
    metadata field of METADATA_COLUMNS -> the Parquet column holding it); empty when it names none.
    A Parquet file without a named column is an error naming the file and the column."""
    if not columns:
        return {}
    rows_of: dict[str, list[SourceFile]] = defaultdict(list)
    for source in sources:
        if source.member is not None and source.member.kind == "parquet" and source.error is None:
            rows_of[source.member.container].append(source)
    credits: dict[str, Credit] = {}
    for container, rows in sorted(rows_of.items()):
        fs, path = storage.filesystem(container)
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            missing = [c for c in columns.values() if parquet.schema_arrow.get_field_index(c) < 0]
            if missing:
                raise MetadataError(
                    f"Parquet source {container}: no column {missing[0]!r} (pool.parquet names it for "
                    f"metadata; its columns: {', '.join(parquet.schema_arrow.names)})"
                )
            table = parquet.read(columns=sorted(set(columns.values())))
            group_starts = [0]
            for group in range(parquet.num_row_groups):
                group_starts.append(group_starts[-1] + parquet.metadata.row_group(group).num_rows)
        values = {field: table.column(column).to_pylist() for field, column in columns.items()}
        for source in rows:
            row = group_starts[source.member.row_group] + source.member.row_in_group
            credits[source.uri] = Credit.of(
                *(values[field][row] if field in values else None for field in METADATA_COLUMNS)
            )
    return credits
