"""Sonify over 1,000 and then 5,000 generated images, with the memory of the driver and of every
Ray worker sampled throughout (benchmarks/sonify_memory.py, the same functions): peak RSS must not
grow with the number of images.

Five times the images may add no more than GROWTH_ALLOWANCE to either peak: anything held per
image in the driver or in a long-lived worker at 12 KB or more per image (a Python dict per
manifest row is about that) would add more across 4,000 more images."""

from __future__ import annotations

import pytest

from benchmarks.sonify_memory import IMAGES_PER_CHUNK, measure_sizes

pytestmark = pytest.mark.slow

SIZES = (1000, 5000)
GROWTH_ALLOWANCE = 48 * 2**20


def test_peak_memory_does_not_grow_with_the_number_of_images(tiny_models, tmp_path):
    results = measure_sizes(tmp_path, tiny_models, list(SIZES))
    (small, small_peaks, _, small_summary), (large, large_peaks, _, large_summary) = results

    for size, summary in ((small, small_summary), (large, large_summary)):
        assert summary["samples"] == size and summary["rejected"] == 0, summary
        assert summary["chunks"] == -(-size // IMAGES_PER_CHUNK)
    for peaks in (small_peaks, large_peaks):
        # The sampler saw the workers at work, not an empty tree.
        assert peaks.samples > 20 and any("write_shards" in t for t in peaks.worker_titles), peaks.worker_titles

    report = f"driver {small_peaks.driver >> 20} -> {large_peaks.driver >> 20} MiB, worker {small_peaks.worker >> 20} -> {large_peaks.worker >> 20} MiB"
    assert large_peaks.driver <= small_peaks.driver + GROWTH_ALLOWANCE, report
    assert large_peaks.worker <= small_peaks.worker + GROWTH_ALLOWANCE, report
