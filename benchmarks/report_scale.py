"""Time of the sonify report as the manifest grows, printed as one table.

    .venv/bin/python -m benchmarks.report_scale [--quick] [--sizes 1000 100000 1000000]

Each size is a generated sonify.out: images.parquet, scenes and manifest parts of up to 250,000
rows, 1 to 3 concepts per sample over 500 labels and 50,000 clips. No shards are written, so the
gallery's samples are chosen but their media are not read (each card shows the missing shard);
what is timed is every DuckDB aggregate, every plot and the page. The claim under test: a report
of a million samples costs about what one of a thousand does, because the driver holds answers
(bins, top labels, at most one count per clip), not rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import validate_config
from pipelines.report import sonify_report
from schemas import IMAGE_REFS, MANIFEST, SCENES, make_table
from schemas.layout import SonifyLayout, chunk_id, shard_id
from stages.io import storage

PART_ROWS = 250_000
LABELS = 500
CLIPS = 50_000

MANIFEST_ROWS = """
    SELECT 'img' || lpad(CAST(i AS VARCHAR), 8, '0') || '__v' AS key,
               'img' || lpad(CAST(i AS VARCHAR), 8, '0') AS image_id,
           '/data/img' || i || '.jpg' AS image_uri, NULL AS image_member, 'jpeg' AS image_format,
               640 AS width, 480 AS height,
           'v' AS vlm, 'sounds-v1' AS prompt_version, 'a caption ' || (i % 1000) AS caption,
           NULL AS image_license, NULL AS image_attribution, NULL AS image_source_url, NULL AS image_title,
           list_transform(range(1 + i % 3), lambda j: {
               'label': 'label ' || ((i * 7 + j * 13) % $labels),
               'text': 'the sound of ' || ((i * 7 + j * 13) % $labels),
               'clip_id': 'clip-' || ((i * 31 + j * 17) % $clips), 'cosine': 0.1 + 0.5 * random(),
               'ssr': 0.3 + 0.4 * random(),
               'threshold': 0.3 + 0.2 * random(), 'n_candidates': CAST(1 + (i + j) % 12 AS INTEGER), 'fallback': false,
               'target_lufs': -27 + 4 * random(), 'clip_lufs': -20 - 10 * random(),
               'gain_db': 5 * random(), 'license': 'CC-BY-4.0',
               'attribution': 'author ' || ((i * 31 + j * 17) % $clips),
               'source_url': NULL::VARCHAR, 'title': NULL::VARCHAR}) AS concepts,
           0 AS dropped_concepts, NULL AS dropped, NULL AS split,
               CASE WHEN i % 10 = 0 THEN -1.5 ELSE 0.0 END AS mix_gain_db,
               -26 + 6 * random() AS mix_lufs,
           -6 + 5 * random() AS mix_peak_dbfs, 16000 AS sample_rate, 5.0 AS duration_s, 0 AS seed,
           lpad(CAST(i // 1000 AS VARCHAR), 6, '0') || '.tar' AS shard, 'jpg' AS shard_image_extension,
               640 AS shard_image_width, 480 AS shard_image_height, NULL AS error, NULL AS error_kind
    FROM range($start, $stop) t(i)
"""

SCENE_ROWS = (
    """
    SELECT image_id, image_uri AS uri, image_member AS member, width, height, image_format AS format,
               100000 AS num_bytes, vlm,
           NULL AS answer, caption, list_transform(concepts, lambda c: {'label': c.label, 'text': c.text}) AS concepts,
           0 AS dropped_empty_concepts, NULL AS dropped, NULL AS error, NULL AS error_kind, NULL AS error_stage
    FROM ("""
    + MANIFEST_ROWS
    + ")"
)


def write_run(root: Path, samples: int) -> None:
    out = SonifyLayout(str(root / "out"))
    with duckdb.connect() as con:
        for part, start in enumerate(range(0, samples, PART_ROWS)):
            bounds = {"start": start, "stop": min(start + PART_ROWS, samples), "labels": LABELS, "clips": CLIPS}
            manifest = con.sql(MANIFEST_ROWS, params=bounds).to_arrow_table()
            storage.write_parquet(out.manifest(shard_id(part)), make_table(MANIFEST, manifest))
            scenes = make_table(SCENES, con.sql(SCENE_ROWS, params=bounds).to_arrow_table())
            storage.write_parquet(out.scenes("v", chunk_id(part)), scenes)
            refs = make_table(IMAGE_REFS, scenes.select(IMAGE_REFS.names))
            storage.write_parquet(str(root / "out" / f"images-{part:06d}.parquet"), refs)
    parts = sorted((root / "out").glob("images-*.parquet"))
    storage.write_parquet(out.images(), pa.concat_tables([pq.read_table(p) for p in parts]))
    for path in parts:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 and 20,000 samples only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    args = parser.parse_args()
    sizes = [1_000, 20_000] if args.quick else args.sizes
    print(f"{'samples':>10} {'generate s':>11} {'report s':>9}")
    for samples in sizes:
        with tempfile.TemporaryDirectory(prefix="report-scale-") as folder:
            root = Path(folder)
            started = time.perf_counter()
            write_run(root, samples)
            generated = time.perf_counter() - started
            config = validate_config(
                {
                    "pool": {"dir": str(root / "pool")},
                    "models": {"clap": {"model": "unused"}},
                    "sonify": {"out": str(root / "out")},
                }
            )
            started = time.perf_counter()
            sonify_report(config)
            reported = time.perf_counter() - started
            print(f"{samples:>10,} {generated:>11.1f} {reported:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
