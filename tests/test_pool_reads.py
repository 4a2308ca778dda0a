"""Mixing reads the clips it uses, not the parts they sit in: bytes counted by a file system below
the code under test. The benchmark benchmarks.pool_reads does the counting; this runs it, as a
command, on a small pool and checks the figures it writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The design's bound: a shard reads at most twice the stored bytes of the clips it mixes.
MAX_READ_RATIO = 2.0


@pytest.mark.slow  # builds a pool with a Ray of its own
def test_mixing_reads_about_the_bytes_of_the_clips_it_mixes(tiny_models, tmp_path):
    figures = tmp_path / "reads.json"
    sizes = ["--files", "12", "--seconds", "6", "16", "--files-per-part", "3"]
    sizes += ["--shards", "4", "--samples", "3", "--clips-per-sample", "3"]
    ray_temp = tempfile.mkdtemp(prefix="srt", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_temp}
    command = [sys.executable, "-m", "benchmarks.pool_reads", *sizes]
    command += [
        "--clap-model",
        tiny_models["clap_transformers"],
        "--work",
        str(tmp_path / "work"),
        "--json",
        str(figures),
    ]
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reads = json.loads(figures.read_text())
    assert reads["parts"] == 4 and reads["samples"] == 12
    assert reads["bytes_read"] == reads["bytes_read_reported"] > 0
    assert reads["used_clip_bytes"] < reads["bytes_read"] <= MAX_READ_RATIO * reads["used_clip_bytes"]
    assert "read / used" in result.stdout
