"""What a sonify run made, counted by DuckDB over its manifest and scenes: counts per stage,
problems by kind, concept and clip statistics, and the seeded gallery sample.

The connection must hold the views `images` (IMAGE_REFS), `scenes` (SCENES), `manifest` (MANIFEST,
the shard parts and the rejected parts, with `filename`) and `pool_clips` (POOL_CLIPS, possibly
empty); `define_views` adds the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from schemas import GALLERY_ITEMS, make_table
from schemas.layout import REJECTED_STEM
from stages.report.sql import Histogram, histogram, problems_by_kind, scalar, seeded_order

TOP_USED_CLIPS = 20
# The manifest's per-sample alignment scores; the gallery shows the samples at each end of each.
ALIGNMENT_SCORES = ("text_audio", "image_audio")
EXTREME_SAMPLES = 2
# A sample whose key is not in the list given as the query's first parameter.
NOT_SHOWN = "NOT list_contains(CAST(? AS VARCHAR[]), key)"
GENERATED_CLIPS_PLAYED = 10
LORENZ_POINTS = 512


def define_views(con: duckdb.DuckDBPyConnection) -> None:
    """samples: rows of shard parts written with their audio; write_failures: rows of shard parts
    whose image could not be read when the shard was written; rejected: scenes that became no
    sample; concepts: one row per concept of a written sample; first_vlm_scenes: one scene per image."""
    shard_part = f"NOT starts_with(parse_filename(filename), '{REJECTED_STEM}')"
    con.execute(f"CREATE VIEW samples AS SELECT * FROM manifest WHERE {shard_part} AND error IS NULL")
    con.execute(f"CREATE VIEW write_failures AS SELECT * FROM manifest WHERE {shard_part} AND error IS NOT NULL")
    con.execute(f"CREATE VIEW rejected AS SELECT * FROM manifest WHERE NOT ({shard_part})")
    con.execute("CREATE VIEW concepts AS SELECT key, unnest(concepts, recursive := true) FROM samples")
    con.execute("CREATE VIEW first_vlm_scenes AS SELECT * FROM scenes WHERE vlm = (SELECT min(vlm) FROM scenes)")


def stage_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """(what, how many) along the pipeline, from the listing to the shards."""
    counts = [
        ("images listed", scalar(con, "SELECT count(*) FROM images")),
        (
            "images decoded",
            scalar(con, "SELECT count(*) FROM first_vlm_scenes WHERE error_stage IS DISTINCT FROM 'images'"),
        ),
        (
            "images large enough (sonify.min_side)",
            scalar(
                con,
                "SELECT count(*) FROM first_vlm_scenes "
                "WHERE error_stage IS DISTINCT FROM 'images' AND dropped IS DISTINCT FROM 'too_small'",
            ),
        ),
    ]
    per_vlm = con.execute(
        """SELECT vlm,
                  count(*) FILTER (WHERE error_stage IS NULL AND dropped IS DISTINCT FROM 'too_small'),
                  count(*) FILTER (WHERE error IS NULL AND dropped IS NULL),
                  coalesce(sum(len(concepts)) FILTER (WHERE error IS NULL AND dropped IS NULL), 0)
           FROM scenes GROUP BY vlm ORDER BY vlm"""
    ).fetchall()
    for vlm, answered, sounding, concepts in per_vlm:
        counts += [
            (f"{vlm}: scenes answered and parsed", answered),
            (f"{vlm}: scenes with sounding concepts", sounding),
            (f"{vlm}: concepts", int(concepts)),
        ]
    counts += [
        (
            "distinct concept texts",
            scalar(
                con,
                "SELECT count(DISTINCT c.text) "
                "FROM (SELECT unnest(concepts) AS c FROM scenes WHERE error IS NULL AND dropped IS NULL)",
            ),
        ),
        (
            "samples planned",
            scalar(con, "SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM write_failures)"),
        ),
        ("samples written", scalar(con, "SELECT count(*) FROM samples")),
        ("concepts in written samples", scalar(con, "SELECT count(*) FROM concepts")),
        ("distinct clips used", scalar(con, "SELECT count(DISTINCT clip_id) FROM concepts")),
        ("concepts with a generated clip", scalar(con, "SELECT count(*) FROM concepts WHERE generated")),
        (
            "shards",
            scalar(
                con,
                "SELECT count(DISTINCT shard) FROM manifest "
                f"WHERE NOT starts_with(parse_filename(filename), '{REJECTED_STEM}')",
            ),
        ),
    ]
    return [(what, int(n)) for what, n in counts]


def license_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Distinct clips used per licence id, most first; the clips without one last."""
    rows = con.execute(
        "SELECT license, count(DISTINCT clip_id) AS n FROM concepts GROUP BY 1 ORDER BY license IS NULL, n DESC, 1"
    ).fetchall()
    return [
        (f"distinct clips used under {license}" if license else "distinct clips used without a licence", int(n))
        for license, n in rows
    ]


def split_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Samples written and distinct clips used per split (sonify.splits), and the clips heard in more
    than one split, which sonify.split_by_clip keeps at 0; nothing for a run without splits."""
    rows = con.execute(
        "SELECT s.split, count(DISTINCT s.key), count(DISTINCT c.clip_id) FROM samples s "
        "LEFT JOIN concepts c USING (key) WHERE s.split IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall()
    if not rows:
        return []
    shared = scalar(
        con,
        "SELECT count(*) FROM (SELECT c.clip_id FROM concepts c JOIN samples s USING (key) "
        "GROUP BY 1 HAVING count(DISTINCT s.split) > 1)",
    )
    counts = [(f"split {split}: samples written", n) for split, n, _ in rows]
    counts += [(f"split {split}: distinct clips used", clips) for split, _, clips in rows]
    return [*counts, ("clips heard in more than one split", shared)]


PROBLEMS = """
    SELECT 'image: ' || error_kind AS kind, uri AS file, error AS reason
        FROM first_vlm_scenes WHERE error_stage = 'images'
    UNION ALL
    SELECT 'dropped: too_small', uri, 'shorter side below sonify.min_side (' || width || 'x' || height || ')'
        FROM first_vlm_scenes WHERE error IS NULL AND dropped = 'too_small'
    UNION ALL
    SELECT error_stage || ' error (' || vlm || ')', uri, error
        FROM scenes WHERE error IS NOT NULL AND error_stage <> 'images'
    UNION ALL
    SELECT 'dropped: ' || dropped || ' (' || vlm || ')', uri, coalesce(caption, dropped)
        FROM scenes WHERE error IS NULL AND dropped IS NOT NULL AND dropped <> 'too_small'
    UNION ALL
    SELECT 'retrieval: ' || r.error_kind || ' (' || r.vlm || ')', r.image_uri, r.error
        FROM rejected r JOIN scenes s ON s.image_id = r.image_id AND s.vlm = r.vlm
        WHERE s.error IS NULL AND s.dropped IS NULL
    UNION ALL
    SELECT 'write: ' || error_kind, image_uri, error FROM write_failures
"""


def problems(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Every image, scene and sample that did not become a sample, by kind. Image errors and
    too-small images are counted once per image, the rest once per scene (image x VLM)."""
    return problems_by_kind(con, PROBLEMS)


def label_frequency(con: duckdb.DuckDBPyConnection, top: int) -> list[tuple[str, int]]:
    return [
        (label, int(n))
        for label, n in con.execute(
            "SELECT coalesce(label, ''), count(*) AS n FROM concepts GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?", [top]
        ).fetchall()
    ]


def concept_histograms(con: duckdb.DuckDBPyConnection) -> dict[str, Histogram]:
    return {
        "cosine": histogram(con, "concepts", "cosine"),
        "ssr": histogram(con, "concepts", "ssr"),
        "threshold": histogram(con, "concepts", "threshold"),
        "n_candidates": histogram(con, "concepts", "n_candidates", integer=True),
    }


def mix_histograms(con: duckdb.DuckDBPyConnection) -> dict[str, Histogram]:
    return {
        "mix_peak_dbfs": histogram(con, "samples", "mix_peak_dbfs"),
        "mix_gain_db": histogram(con, "samples", "mix_gain_db"),
    }


def alignment_histograms(con: duckdb.DuckDBPyConnection) -> dict[str, Histogram]:
    """The alignment scores of the written samples (null where a sample has none: counted as missing)."""
    return {name: histogram(con, "samples", name) for name in ALIGNMENT_SCORES}


def clip_use_counts(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """How many concepts chose each clip that was chosen at all (at most the pool's size)."""
    rows = con.execute("SELECT count(*) FROM concepts GROUP BY clip_id").fetchnumpy()
    return np.asarray(next(iter(rows.values())), dtype=np.int64)


@dataclass(frozen=True)
class ClipUsage:
    distinct: int
    uses: int
    top_share: float
    population: int
    lorenz_x: np.ndarray
    lorenz_y: np.ndarray
    gini: float


def clip_usage(use_counts: np.ndarray, pool_clips: int | None) -> ClipUsage:
    """Concentration of clip choices. The Lorenz curve runs over the pool's retrievable clips when
    their number is known (unused ones count as zero uses), else over the clips used: the share of
    all uses (y) taken by the least used share of clips (x)."""
    counts = np.sort(np.asarray(use_counts, dtype=np.int64))
    population = max(pool_clips or 0, counts.size)
    counts = np.concatenate([np.zeros(population - counts.size, dtype=np.int64), counts])
    uses = int(counts.sum())
    if not uses:
        return ClipUsage(0, 0, 0.0, population, np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.0)
    x = np.arange(population + 1) / population
    y = np.concatenate([[0.0], np.cumsum(counts) / uses])
    gini = float(1.0 - np.sum((y[1:] + y[:-1]) / population))
    keep = np.unique(np.linspace(0, population, min(population + 1, LORENZ_POINTS)).round().astype(int))
    top_share = float(counts[-TOP_USED_CLIPS:].sum() / uses)
    return ClipUsage(int(np.count_nonzero(counts)), uses, top_share, population, x[keep], y[keep], gini)


def exposure(uses: Mapping[str, int], pool_clips: int | None, pool_skewness: float | None) -> dict:
    """The exposure numbers of a run from each used clip's use count: distinct clips, the most uses of
    one clip, the share of uses taken by the TOP_USED_CLIPS most used, the Gini coefficient of use
    over the pool's clips (unused ones count as zero), and the pool's k-occurrence skewness."""
    counts = np.array(sorted(uses.values()), dtype=np.int64)
    usage = clip_usage(counts, pool_clips)
    return {
        "distinct_clips": usage.distinct,
        "uses": usage.uses,
        "max_uses_of_one_clip": int(counts.max()) if counts.size else 0,
        "top_clips": TOP_USED_CLIPS,
        "top_clips_share": round(usage.top_share, 6),
        "gini": round(usage.gini, 6),
        "pool_k_occurrence_skewness": None if pool_skewness is None else round(pool_skewness, 6),
    }


def top_used_clips(con: duckdb.DuckDBPyConnection, top: int) -> list[dict]:
    """The `top` most used clips (ties by clip id), with their uses and where in the pool's sources they come from."""
    rows = con.execute(
        """SELECT u.clip_id, u.uses, p.source_uri, p.start_s
           FROM (SELECT clip_id, count(*) AS uses FROM concepts GROUP BY clip_id) u
           LEFT JOIN pool_clips p ON p.clip_id = u.clip_id
           ORDER BY u.uses DESC, u.clip_id LIMIT ?""",
        [top],
    ).fetchall()
    return [{"clip_id": c, "uses": int(n), "source_uri": uri, "start_s": start} for c, n, uri, start in rows]


def used_generated_clips(con: duckdb.DuckDBPyConnection, top: int) -> list[dict]:
    """The `top` most used generated clips (ties by clip id), with their uses, where they come from
    and the prompt they were made from."""
    rows = con.execute(
        """SELECT u.clip_id, u.uses, p.source_uri, p.start_s, p.generation.prompt
           FROM (SELECT clip_id, count(*) AS uses FROM concepts WHERE generated GROUP BY clip_id) u
           LEFT JOIN pool_clips p ON p.clip_id = u.clip_id
           ORDER BY u.uses DESC, u.clip_id LIMIT ?""",
        [top],
    ).fetchall()
    return [
        {"clip_id": c, "uses": int(n), "source_uri": uri, "start_s": start, "prompt": prompt}
        for c, n, uri, start, prompt in rows
    ]


@dataclass(frozen=True)
class LoudnessCheck:
    """Per sample: the loudness the plan asked for (the power sum of its sources' targets, plus the
    mix's peak gain) against the mix's measured loudness. Points are a seeded sample of at most
    `limit` samples; the mean and spread of the difference are over every sample."""

    expected: np.ndarray
    measured: np.ndarray
    samples: int
    mean_difference: float | None
    std_difference: float | None


EXPECTED_MIX_LUFS = (
    "10 * log10(list_sum(list_transform(concepts, lambda c: pow(10, c.target_lufs / 10)))) + coalesce(mix_gain_db, 0)"
)


def loudness_check(con: duckdb.DuckDBPyConnection, limit: int, seed: int) -> LoudnessCheck:
    paired = (
        f"(SELECT key, {EXPECTED_MIX_LUFS} AS expected, mix_lufs AS measured FROM samples WHERE isfinite(mix_lufs))"
    )
    n, mean, std = con.execute(
        f"SELECT count(*), avg(measured - expected), stddev_samp(measured - expected) FROM {paired}"
    ).fetchone()
    points = con.execute(
        f"SELECT expected, measured FROM {paired} ORDER BY {seeded_order('key')} LIMIT ?", [seed, limit]
    ).fetchnumpy()
    return LoudnessCheck(
        np.asarray(points["expected"], dtype=np.float64),
        np.asarray(points["measured"], dtype=np.float64),
        int(n),
        mean,
        std,
    )


def gallery_items(con: duckdb.DuckDBPyConnection, size: int, seed: int) -> pa.Table:
    """Up to `size` written samples, with each concept's clip located in the pool: first the
    EXTREME_SAMPLES lowest and highest of each alignment score (samples without it aside), then a
    seeded random choice among the others."""
    columns = "key, image_id, image_uri, image_member, vlm, caption, mix_lufs, shard, concepts, text_audio, image_audio"
    rows: list[dict] = []
    for name in ALIGNMENT_SCORES:
        for end, order in (("lowest", "ASC"), ("highest", "DESC")):
            shown = [r["key"] for r in rows]
            extremes = con.sql(
                f"""SELECT {columns} FROM samples WHERE {name} IS NOT NULL AND {NOT_SHOWN}
                    ORDER BY {name} {order}, key LIMIT ?""",
                params=[shown, min(EXTREME_SAMPLES, size - len(rows))],
            ).to_arrow_table()
            rows += [r | {"shown_for": f"{end} {name}"} for r in extremes.to_pylist()]
    random = con.sql(
        f"""SELECT {columns} FROM samples WHERE {NOT_SHOWN} ORDER BY {seeded_order("key")} LIMIT ?""",
        params=[[r["key"] for r in rows], seed, size - len(rows)],
    ).to_arrow_table()
    rows += [r | {"shown_for": None} for r in random.to_pylist()]
    used = sorted({c["clip_id"] for row in rows for c in row["concepts"]})
    sources: dict[str, tuple[str, float]] = {}
    if used:
        query = "SELECT clip_id, source_uri, start_s FROM pool_clips WHERE clip_id IN (SELECT unnest(?))"
        for clip_id, uri, start in con.execute(query, [used]).fetchall():
            sources[clip_id] = (uri, start)
    for row in rows:
        row["concepts"] = [
            {
                "label": c["label"],
                "text": c["text"],
                "clip_id": c["clip_id"],
                "cosine": c["cosine"],
                "gain_db": c["gain_db"],
                "clip_source_uri": sources.get(c["clip_id"], (None, None))[0],
                "clip_start_s": sources.get(c["clip_id"], (None, None))[1],
            }
            for c in row["concepts"]
        ]
    return make_table(GALLERY_ITEMS, {name: [r[name] for r in rows] for name in GALLERY_ITEMS.names})
