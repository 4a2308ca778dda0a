"""The scale targets of a sonify run, measured in one run of this script and printed as one table.

    .venv/bin/python -m benchmarks.sonify_scale [--quick]

- Memory: two complete `run_pipeline.py sonify` processes, over 1,000 and 8,000 generated images
  whose provided concepts are all distinct texts (4 per image: 32,000 at 8,000 images), against one
  pool built first through the real pool code with the tiny CLAP. The driver and every Ray worker
  are sampled every 0.1 s (benchmarks.sonify_memory); the table compares the peaks.
- End to end: the 8,000-image run's samples per second (the whole `run_pipeline.py sonify` process:
  start, listing, scenes, retrieval, planning, mixing and writing), against a floor of the
  per-sample work measured in this process on the same run's plans: the shard writer alone (read
  the image and the clips' byte ranges, decode, mix, measure, encode, tar) in one process. The
  ratio per core of the run is printed beside it.
- Pool reads: benchmarks.pool_reads, bytes counted by a filesystem wrapper, not by our code.
- Search: benchmarks.search at pool scale, 500K x 512 clustered vectors, queries across a modality gap.

Timings on a shared machine are noisy; every target is a ratio of two measurements of this run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks import pool_reads, search
from benchmarks.common import parse_args
from benchmarks.sonify_memory import measure_sizes, mib, run_measured, write_pool_inputs
from schemas.layout import PoolLayout, SonifyLayout

CONCEPTS_PER_IMAGE = 4
MIB = 2**20
GROWTH_LIMIT = 100 * MIB


def per_sample_floor(out: Path, pool_dir: str, scratch: Path) -> tuple[float, int]:
    """Samples per second of the shard writer alone, in this process, over the run's own plans:
    the work every sample needs however it is scheduled."""
    import pyarrow.parquet as pq
    import yaml

    from schemas import SHARD_PLANS, make_table
    from stages.images.decoding import ImageEncoding
    from stages.pairing.shard_stage import WriteShards

    settings = yaml.safe_load(Path(SonifyLayout(str(out)).config()).read_text())
    sonify = settings["sonify"]
    encoding = ImageEncoding(
        sonify["image_format"], sonify["image_quality"], sonify["max_image_side"], sonify["max_image_pixels"]
    )
    writer = WriteShards(PoolLayout(pool_dir), SonifyLayout(str(scratch)), settings["mix"]["peak_dbfs"], encoding)
    plans = sorted(Path(SonifyLayout(str(out)).plans_folder()).glob("*-*.parquet"))
    samples, started = 0, time.perf_counter()
    for number, plan in enumerate(plans):
        samples += writer.write_shard(f"{number:06d}", make_table(SHARD_PLANS, pq.read_table(plan)))["samples"]
    return samples / (time.perf_counter() - started), samples


def planning_rate(pool_clips: int, images: int = 1024, concepts: int = 5, search_k: int = 64) -> float:
    """Samples per second that `plan_chunk` plans in this process: one chunk of `images` images with
    `concepts` distinct texts each, every text with `search_k` random neighbours among a MIX_CLIPS
    table of `pool_clips` rows (the table every planning worker holds)."""
    import numpy as np
    import pyarrow as pa

    from pipelines.config import validate_config
    from schemas import MATCHES, MIX_CLIPS, SCENES, make_table
    from stages.pairing.planning import plan_chunk

    rng = np.random.default_rng(0)
    ids = np.array([f"{rng.integers(2**62):016x}-{i % 100:05d}" for i in range(pool_clips)], dtype=object)
    mix_clips = make_table(
        MIX_CLIPS,
        {
            "clip_id": ids,
            "recording": [f"recording-{i // 4}" for i in range(pool_clips)],
            "lufs": rng.uniform(-40, -10, pool_clips),
            "part": [f"part-{i // 200:06d}" for i in range(pool_clips)],
            "audio_offset": rng.integers(0, 10**7, pool_clips),
            "audio_bytes": rng.integers(50_000, 150_000, pool_clips),
            "license": ["CC-BY-4.0"] * pool_clips,
            "attribution": [f"author {i % 1000}" for i in range(pool_clips)],
            "source_url": [f"https://example.org/{i}" for i in range(pool_clips)],
            "title": [f"recording {i}" for i in range(pool_clips)],
        },
    ).sort_by("clip_id")
    texts = [[f"sound {j} of scene {i}" for j in range(concepts)] for i in range(images)]
    base = dict.fromkeys(SCENES.names)
    scenes = pa.Table.from_pylist(
        [
            base
            | {
                "image_id": f"img-{i:07d}",
                "uri": f"/images/{i}.jpg",
                "vlm": "given",
                "format": "JPEG",
                "width": 512,
                "height": 512,
                "num_bytes": 60_000,
                "dropped_empty_concepts": 0,
                "concepts": [{"label": "x", "text": t} for t in row],
            }
            for i, row in enumerate(texts)
        ],
        schema=SCENES,
    )
    flat = [t for row in texts for t in row]
    matches = make_table(
        MATCHES,
        {
            "text": flat,
            "mapper": [None] * len(flat),
            "image_id": [None] * len(flat),
            "clip_ids": [ids[rng.choice(pool_clips, search_k, replace=False)].tolist() for _ in flat],
            "scores": [np.sort(rng.uniform(0.1, 0.6, search_k))[::-1].astype(np.float32) for _ in flat],
            "corrected": [None] * len(flat),
        },
    )
    config = validate_config(
        {"pool": {"dir": "/unused"}, "models": {"clap": {"model": "unused"}}, "retrieval": {"search_k": search_k}}
    )
    started = time.perf_counter()
    plan_chunk(config, scenes, matches, mix_clips)
    return images / (time.perf_counter() - started)


def row(measure: str, value: str, target: str, met: bool | None) -> dict:
    return {"measure": measure, "value": value, "target": target, "met": met}


def print_table(rows: list[dict]) -> None:
    header = {"measure": "measure", "value": "value", "target": "target", "met": "met"}
    lines = [header, *[{**r, "met": "" if r["met"] is None else "yes" if r["met"] else "NO"} for r in rows]]
    widths = {k: max(len(str(line[k])) for line in lines) for k in header}
    for number, line in enumerate(lines):
        print(" | ".join(str(line[k]).ljust(widths[k]) for k in header))
        if number == 0:
            print("-+-".join("-" * widths[k] for k in header))


def main() -> None:
    args = parse_args(__doc__)
    sizes = [250, 2000] if args.quick else [1000, 8000]
    import yaml

    from demo.tiny_models import build_transformers_clap

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models = {"clap_transformers": str(build_transformers_clap(root / "models", root / "build"))}
        pool_config = write_pool_inputs(root, models)
        run_measured("pool", pool_config, root / "pool.log")
        runs = measure_sizes(root, sizes, pool_config, CONCEPTS_PER_IMAGE)
        largest_out = root / f"out-{len(sizes) - 1}-{sizes[-1]}"
        floor, floor_samples = per_sample_floor(largest_out, str(root / "pool"), root / "floor")
        cpus = yaml.safe_load(pool_config.read_text())["ray"]["num_cpus"]
        reads = pool_reads.measure_pool_reads(
            root / "reads", pool_reads.QUICK if args.quick else pool_reads.FULL, models["clap_transformers"]
        )
    searched = search.measure_search(n_vectors=100_000 if args.quick else 500_000)
    planned = planning_rate(100_000 if args.quick else 500_000)

    (small, small_peaks, _, small_summary), (large, large_peaks, large_seconds, large_summary) = runs
    e2e = large_summary["samples"] / large_seconds
    driver_growth = large_peaks.driver - small_peaks.driver
    worker_growth = large_peaks.worker - small_peaks.worker
    rows = [
        row(
            f"driver peak RSS, {small:,} vs {large:,} images "
            f"({large_summary['concept_texts_searched']:,} distinct texts)",
            f"{mib(small_peaks.driver)} -> {mib(large_peaks.driver)} MiB ({driver_growth / MIB:+,.0f})",
            "growth <= 100 MiB",
            driver_growth <= GROWTH_LIMIT,
        ),
        row(
            "largest worker peak RSS, same runs",
            f"{mib(small_peaks.worker)} -> {mib(large_peaks.worker)} MiB ({worker_growth / MIB:+,.0f})",
            "growth <= 100 MiB",
            worker_growth <= GROWTH_LIMIT,
        ),
        row(
            "pool bytes read while mixing ÷ stored bytes of the clips used (counted by the file system)",
            f"{reads['bytes_read'] / MIB:,.1f} ÷ {reads['used_clip_bytes'] / MIB:,.1f} MiB = {reads['read_ratio']:.3f}",
            f"<= {pool_reads.MAX_READ_RATIO:g}",
            reads["read_ratio"] <= pool_reads.MAX_READ_RATIO,
        ),
        *[
            row(r["measure"], str(r["value"]), "" if r["target"] is None else f">= {r['target']:g}", r["met"])
            for r in searched
            if r["target"] is not None
        ],
        row(
            "planning samples/s in one process (a chunk of 1,024 images x 5 texts, K=64, "
            f"{'100K' if args.quick else '500K'} mixable clips)",
            f"{planned:,.0f}",
            "",
            None,
        ),
        row(
            "end-to-end samples/s ÷ the per-sample work's samples/s in one process (the floor)",
            f"{e2e:.1f} ÷ {floor:.1f} = {e2e / floor:.2f}",
            ">= 0.5",
            e2e / floor >= 0.5,
        ),
        row(f"  the same per core of the run (ray.num_cpus {cpus})", f"{e2e / (floor * cpus):.2f}", "", None),
        row(
            f"  {large:,}-image run: process seconds, and per phase",
            f"{large_seconds:.0f}: " + ", ".join(f"{k} {v:.0f}" for k, v in large_summary["seconds"].items()),
            "",
            None,
        ),
    ]
    print(
        f"cpus {os.cpu_count()}; {small_summary['samples']:,} and {large_summary['samples']:,} samples written; "
        f"floor over {floor_samples:,} samples"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
