"""Mixing reads the clips it uses, not the parts they sit in: bytes counted by a file system below
the code under test (benchmarks/scale_reads.py, the same function, on a small pool)."""

from __future__ import annotations

from benchmarks.scale_reads import MAX_READ_RATIO, Sizes, measure_pool_reads


def test_mixing_reads_about_the_bytes_of_the_clips_it_mixes(tiny_models, ray_session, tmp_path):
    sizes = Sizes(files=12, seconds=(6.0, 16.0), files_per_part=3, shards=4, samples=3, clips_per_sample=3)
    reads = measure_pool_reads(tmp_path, sizes, clap_model=tiny_models["clap_transformers"])
    assert reads["parts"] == 4 and reads["samples"] == 12
    assert reads["bytes_read"] == reads["bytes_read_reported"] > 0
    assert reads["used_clip_bytes"] < reads["bytes_read"] <= MAX_READ_RATIO * reads["used_clip_bytes"]
    # Each shard's 9 clips touch most of the 4 parts, and reading those whole would cost far more.
    assert reads["whole_part_bytes"] > 3 * reads["bytes_read"]
