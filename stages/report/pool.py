"""What a pool holds, counted by DuckDB over its clips table: files, formats, source durations,
clip loudness, silence, licences and errors by kind.

The connection must hold the view `clips` (POOL_CLIPS, with `filename`).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stages.report.sql import Histogram, histogram, problems_by_kind

CLIPS = "(SELECT * FROM clips WHERE error IS NULL)"


def pool_counts(con: duckdb.DuckDBPyConnection, clip_seconds: float) -> list[tuple[str, int]]:
    files, failed, clips, silent, padded, generated = con.execute(
        """SELECT count(DISTINCT source_uri),
                  count(DISTINCT source_uri) FILTER (WHERE error IS NOT NULL),
                  count(*) FILTER (WHERE error IS NULL),
                  count(*) FILTER (WHERE error IS NULL AND silent),
                  count(*) FILTER (WHERE error IS NULL AND duration_s < ?),
                  count(*) FILTER (WHERE error IS NULL AND generation IS NOT NULL)
           FROM clips""",
        # a clip whose real audio is shorter than the clip, by more than rounding, ends in padding
        [clip_seconds - 1e-6],
    ).fetchone()
    return [
        ("source files", files),
        ("source files with an error", failed),
        ("clips", clips),
        ("silent clips (never retrieved)", silent),
        ("clips with zero padding", padded),
        ("generated clips (run_pipeline.py generate)", generated),
    ]


def formats(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Source files per decoded format."""
    return [
        (fmt, int(n))
        for fmt, n in con.execute(
            "SELECT coalesce(source_format, 'unknown'), count(DISTINCT source_uri) AS n "
            f"FROM {CLIPS} GROUP BY 1 ORDER BY n DESC, 1"
        ).fetchall()
    ]


def license_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Clips (variants included) per licence id, most first; the clips no metadata names last."""
    rows = con.execute(
        f"SELECT license, count(*) AS n FROM {CLIPS} GROUP BY 1 ORDER BY license IS NULL, n DESC, 1"
    ).fetchall()
    return [(f"clips under {license}" if license else "clips without a licence", int(n)) for license, n in rows]


def source_durations(con: duckdb.DuckDBPyConnection) -> Histogram:
    return histogram(con, f"(SELECT any_value(source_duration_s) AS d FROM {CLIPS} GROUP BY source_uri)", "d")


def clip_loudness(con: duckdb.DuckDBPyConnection) -> Histogram:
    """Integrated loudness at the pool rate; digital silence has none and counts as missing."""
    return histogram(con, CLIPS, "lufs")


def silent_share(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(silent clips, audible clips)."""
    silent, audible = con.execute(
        f"SELECT count(*) FILTER (WHERE silent), count(*) FILTER (WHERE NOT silent OR silent IS NULL) FROM {CLIPS}"
    ).fetchone()
    return int(silent), int(audible)


def pool_problems(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return problems_by_kind(
        con,
        "SELECT 'audio: ' || error_kind AS kind, source_uri AS file, error AS reason "
        "FROM clips WHERE error IS NOT NULL",
    )
