"""Sonify over 1,000 and then 5,000 generated images whose concept texts are all distinct (as a
free-form VLM writes them, so retrieval and planning handle as many texts as the images hold), with
the memory of the driver and of every Ray worker sampled throughout by the benchmark
benchmarks.sonify_memory, run here as a command with --json: peak RSS and USS must not grow with
the number of images.

USS (memory private to a process) is what anything held per image would add to. Peaks are
transient maxima that the 0.1 s sampler catches or misses: two identical 1,000-image runs here
peaked 607 and 721 MiB (driver USS), while 5,000 images peaked at 612 MiB (driver) and 563 MiB
(largest worker, against 674 MiB at 1,000). GROWTH_ALLOWANCE sits above that noise, so the test
fails on what holds about 40 KB or more per image in one process (the decoded pixels of every
128x128 image, say), not on small per-row metadata; the benchmark prints the figures themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = (1000, 5000)
GROWTH_ALLOWANCE = 160 * 2**20


def test_peak_memory_does_not_grow_with_the_number_of_images(single_node_run, tmp_path):
    # The pool of conftest's reference run (tiny CLAP, 8 files); its config gives the models.
    single_node_run.pool_dir()
    figures = tmp_path / "memory.json"
    command = [sys.executable, "-m", "benchmarks.sonify_memory", "--sizes", *map(str, SIZES)]
    command += ["--pool-config", str(single_node_run.config), "--work", str(tmp_path / "work"), "--json", str(figures)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    small, large = json.loads(figures.read_text())

    for run in (small, large):
        summary = run["summary"]
        assert summary["samples"] == run["images"] and summary["rejected"] == 0, summary
        assert summary["chunks"] == -(-run["images"] // run["images_per_chunk"])
        assert summary["concept_texts_searched"] == summary["concepts"] >= run["images"]
        # The sampler saw the workers at work, not an empty tree.
        peaks = run["peaks"]
        assert peaks["samples"] > 20 and any("write_shards" in t for t in peaks["worker_titles"]), peaks

    for name in ("driver", "driver_uss", "worker", "worker_uss"):
        small_peak, large_peak = small["peaks"][name], large["peaks"][name]
        assert large_peak <= small_peak + GROWTH_ALLOWANCE, (
            f"{name}: {small_peak >> 20} MiB at {small['images']} images, {large_peak >> 20} MiB at {large['images']}"
        )
