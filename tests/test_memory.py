"""Sonify over 1,000 and then 5,000 generated images whose concept texts are all distinct (as a
free-form VLM writes them, so retrieval and planning handle as many texts as the images hold), with
the memory of the driver and of every Ray worker sampled throughout (benchmarks/sonify_memory.py,
the same functions): peak RSS and USS must not grow with the number of images.

USS (memory private to a process) is what anything held per image would add to. Peaks are
transient maxima that the 0.1 s sampler catches or misses: two identical 1,000-image runs here
peaked 607 and 721 MiB (driver USS), while 5,000 images peaked at 612 MiB (driver) and 563 MiB
(largest worker, against 674 MiB at 1,000). GROWTH_ALLOWANCE sits above that noise, so the test
fails on what holds about 40 KB or more per image in one process (the decoded pixels of every
128x128 image, say), not on small per-row metadata; the benchmark prints the figures themselves."""

from __future__ import annotations

from benchmarks.sonify_memory import IMAGES_PER_CHUNK, measure_sizes

SIZES = (1000, 5000)
GROWTH_ALLOWANCE = 160 * 2**20


def test_peak_memory_does_not_grow_with_the_number_of_images(single_node_run, tmp_path):
    # The pool of conftest's reference run (tiny CLAP, 8 files); its config gives the models.
    single_node_run.pool_dir()
    results = measure_sizes(tmp_path, list(SIZES), single_node_run.config)
    (small, small_peaks, _, small_summary), (large, large_peaks, _, large_summary) = results

    for size, summary in ((small, small_summary), (large, large_summary)):
        assert summary["samples"] == size and summary["rejected"] == 0, summary
        assert summary["chunks"] == -(-size // IMAGES_PER_CHUNK)
        assert summary["concept_texts_searched"] == summary["concepts"] >= size
    for peaks in (small_peaks, large_peaks):
        # The sampler saw the workers at work, not an empty tree.
        assert peaks.samples > 20 and any("write_shards" in t for t in peaks.worker_titles), peaks.worker_titles

    for name in ("driver", "driver_uss", "worker", "worker_uss"):
        small_peak, large_peak = getattr(small_peaks, name), getattr(large_peaks, name)
        assert large_peak <= small_peak + GROWTH_ALLOWANCE, (
            f"{name}: {small_peak >> 20} MiB at {small} images, {large_peak >> 20} MiB at {large}"
        )
