"""DuckDB over a run's Parquet files, for reports: one connection with a view per table, and
aggregates whose size is that of their answer (counts, histogram bins, a few examples), never that
of the dataset, so a report of a million samples costs about what one of a thousand does."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import REPORT_PROBLEMS, make_table, schema_version
from schemas.errors import PipelineError
from stages.io import storage

EXAMPLES_PER_KIND = 3


class ReportInputError(PipelineError):
    """A run's files cannot be reported: missing, or written under another schema."""


def check_schema(url: str, schema: pa.Schema) -> None:
    """Refuses a file written under another contract than the one the report's queries assume."""
    fs, path = storage.filesystem(url)
    written = pq.read_schema(path, filesystem=fs)
    found = schema_version(written)
    if found != schema_version(schema) or written.names != schema.names:
        raise ReportInputError(
            f"{url} was written under schema {found}; this report reads {schema_version(schema)}: "
            "report it with the version of the pipeline that wrote it, or run that phase again into a new folder"
        )


@contextmanager
def connect(views: dict[str, tuple[list[str], pa.Schema]]) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with one view per table: its Parquet files (fsspec URLs, any protocol)
    with the file name as `filename`, or an empty table of its schema when it has none."""
    con = duckdb.connect()
    try:
        registered: set[str] = set()
        for name, (urls, schema) in views.items():
            if not urls:
                empty = schema.empty_table().append_column("filename", pa.array([], pa.string()))
                con.register(name, empty)
                continue
            check_schema(urls[0], schema)
            fs, _ = storage.filesystem(urls[0])
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            if not storage.is_local(fs) and protocol not in registered:
                con.register_filesystem(fs)
                registered.add(protocol)
            con.read_parquet(urls, filename=True).create_view(name)
        yield con
    finally:
        con.close()


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    return con.execute(sql, params or []).fetchone()[0]


@dataclass(frozen=True)
class Histogram:
    """Counts of the finite values of a column in bins [edges[i], edges[i+1]); the last bin holds its
    upper edge. `missing` counts the rows whose value is null or not finite."""

    edges: np.ndarray
    counts: np.ndarray
    missing: int

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def histogram(
    con: duckdb.DuckDBPyConnection, source: str, column: str, bins: int = 40, integer: bool = False
) -> Histogram:
    """Histogram of `column` of the relation `source` (a view name or a parenthesized query),
    counted by DuckDB. Integer columns get bins of whole units centred on the values."""
    value = f"CAST({column} AS DOUBLE)"
    low, high, finite, rows = con.execute(
        f"SELECT min(v), max(v), count(v), (SELECT count(*) FROM {source}) FROM "
        f"(SELECT {value} AS v FROM {source}) WHERE isfinite(v)"
    ).fetchone()
    if not finite:
        return Histogram(np.array([0.0, 1.0]), np.zeros(1, dtype=np.int64), int(rows))
    if integer:
        width = float(max(1, math.ceil((high - low + 1) / bins)))
        start, bins = low - 0.5, int(math.ceil((high - low + 1) / width))
    elif high > low:
        width, start = (high - low) / bins, low
    else:
        width, start, bins = 1.0, low - 0.5, 1
    counted = con.execute(
        f"SELECT least(CAST(floor((v - ?) / ?) AS BIGINT), ?) AS b, count(*) FROM "
        f"(SELECT {value} AS v FROM {source}) WHERE isfinite(v) GROUP BY b",
        [start, width, bins - 1],
    ).fetchall()
    counts = np.zeros(bins, dtype=np.int64)
    for index, n in counted:
        counts[index] = n
    return Histogram(start + width * np.arange(bins + 1), counts, int(rows - finite))


def problems_by_kind(con: duckdb.DuckDBPyConnection, problems: str) -> pa.Table:
    """REPORT_PROBLEMS of a query with columns (kind, file, reason): each kind's count and its first
    examples by file name, most frequent kind first."""
    rows = con.execute(
        f"""SELECT kind, n, file, reason FROM (
                SELECT kind, file, reason, count(*) OVER (PARTITION BY kind) AS n,
                       row_number() OVER (PARTITION BY kind ORDER BY file, reason) AS r
                FROM ({problems})
            ) WHERE r <= {EXAMPLES_PER_KIND} ORDER BY n DESC, kind, r"""
    ).fetchall()
    kinds: dict[str, dict] = {}
    for kind, n, file, reason in rows:
        entry = kinds.setdefault(kind, {"kind": kind, "count": n, "examples": []})
        entry["examples"].append({"file": file, "reason": reason})
    ordered = list(kinds.values())
    return make_table(REPORT_PROBLEMS, {name: [k[name] for k in ordered] for name in REPORT_PROBLEMS.names})


def seeded_order(key_column: str) -> str:
    """An ORDER BY expression that shuffles rows by a stable hash of (seed, key): the same seed
    picks the same rows whatever the files, their order or the number of threads. The seed is the
    query parameter at the expression's place."""
    return f"md5(CAST(? AS VARCHAR) || ':' || {key_column})"
