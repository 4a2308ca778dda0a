"""Helpers shared by every table schema: versioning and strict table construction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

_NAME_KEY = b"sonify.schema"
_VERSION_KEY = b"sonify.schema_version"


class SchemaMismatch(ValueError):
    """A table does not match the contract it claims to follow."""


def versioned(name: str, version: int, fields: Sequence[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={_NAME_KEY: name.encode(), _VERSION_KEY: str(version).encode()})


def schema_version(schema: pa.Schema) -> tuple[str, int] | None:
    """The (name, version) a schema was stamped with, or None for an unstamped schema."""
    meta = schema.metadata or {}
    if _NAME_KEY not in meta:
        return None
    return meta[_NAME_KEY].decode(), int(meta[_VERSION_KEY])


def make_table(schema: pa.Schema, columns: Mapping[str, Any] | pa.Table) -> pa.Table:
    """Build a table of exactly `schema` from columns (lists, arrays) or from another table.

    Extra or missing columns are a broken contract, not something to paper over.
    """
    names = list(columns.column_names) if isinstance(columns, pa.Table) else list(columns)
    missing = [f.name for f in schema if f.name not in names]
    extra = [n for n in names if schema.get_field_index(n) < 0]
    if missing or extra:
        label = schema_version(schema)
        raise SchemaMismatch(f"table for schema {label}: missing columns {missing}, unexpected columns {extra}")
    arrays = []
    for field in schema:
        values = columns.column(field.name) if isinstance(columns, pa.Table) else columns[field.name]
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arrays.append(values.cast(field.type) if values.type != field.type else values)
        else:
            arrays.append(pa.array(values, type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaMismatch(f"column {field.name!r} of {schema_version(schema)} holds nulls")
    return table
