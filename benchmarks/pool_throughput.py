"""Throughput of the audio-pool stages on this machine, measured in one run and printed as one table.

    .venv/bin/python -m benchmarks.pool_throughput [--quick] [--seed S]

1. standardize: `Standardize.process_part` (no Ray) on one part of synthetic source files.
2. embed: `embed_audio` of both CLAP backends, with the tiny random models from `build_all`.

The index over the embeddings is measured by benchmarks.search.

Absolute timings on a shared machine are noisy; the ratios printed under the table compare
measurements taken back to back in the same process and are the figures to rely on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from benchmarks import common
from demo.tiny_models import build_all
from schemas.config import ClapConfig, PoolConfig
from stages.audio.standardize_stage import Standardize
from stages.embed.clap import CLAP_SAMPLE_RATE, load_clap

SOURCE_RATES = (16000, 44100, 48000)
EMBED_BATCH = 16
EMBED_CLIP_SECONDS = 5.0


@dataclass
class Sizes:
    source_files: int
    embed_clips: int


FULL = Sizes(source_files=20, embed_clips=64)
QUICK = Sizes(source_files=8, embed_clips=16 + EMBED_BATCH)


def synthetic_audio(rng: np.random.Generator, seconds: float, rate: int, channels: int) -> np.ndarray:
    """A tone plus noise at a level well above the silence threshold, [frames, channels]."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
    signal = tone[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    return signal.astype(np.float32)


def write_sources(folder: Path, count: int, rng: np.random.Generator) -> list[str]:
    """Source files of varied rate, channel count, length and format (wav and flac)."""
    uris = []
    for i in range(count):
        rate = SOURCE_RATES[i % len(SOURCE_RATES)]
        channels = 1 + i % 2
        audio = synthetic_audio(rng, rng.uniform(10, 30), rate, channels)
        path = folder / f"source-{i:03d}.{'wav' if i % 4 < 2 else 'flac'}"
        soundfile.write(path, audio, rate, subtype="PCM_16")
        uris.append(str(path))
    return uris


def bench_standardize(work: Path, file_count: int, rng: np.random.Generator) -> common.Row:
    sources = work / "sources"
    sources.mkdir()
    uris = write_sources(sources, file_count, rng)
    pool = PoolConfig(dir=str(work / "pool"))
    stage = Standardize(pool.dir, pool.sample_rate, pool.clip_seconds, pool.silence_lufs, pool.mix_sample_rates)
    part = {"part": "00000", "uris": uris, "fingerprints": None, "errors": None}
    start = time.perf_counter()
    clips = stage.process_part(part)
    seconds = time.perf_counter() - start
    errors = [e for e in clips.column("error").to_pylist() if e is not None]
    if errors:
        raise RuntimeError(f"standardize produced error rows, so its throughput means nothing: {errors[:3]}")
    source_seconds = sum(clips.column("duration_s").to_pylist())
    return common.Row(
        "standardize (process_part)",
        f"{file_count} files, {clips.num_rows} clips",
        seconds,
        clips.num_rows / seconds,
        "clips/s",
        note=f"{source_seconds / seconds:.0f}x real time, mix rates {pool.mix_sample_rates}",
    )


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send output to stderr so stdout holds only the table. Model builders and loaders print
    progress, some of it from native code (the tokenizers trainer), so file descriptor 1 itself is
    redirected, not just sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def clap_configs(models: dict[str, str]) -> dict[str, ClapConfig]:
    return {
        "transformers": ClapConfig(backend="transformers", model=models["clap_transformers"]),
        "laion_clap": ClapConfig(
            backend="laion_clap",
            model=models["clap_laion_checkpoint"],
            text_backbones_dir=models["clap_laion_text_backbones"],
        ),
    }


def bench_embed(backend: str, config: ClapConfig, clips: list[np.ndarray]) -> list[common.Row]:
    start = time.perf_counter()
    with quiet_stdout():
        model = load_clap(config)
    load_seconds = time.perf_counter() - start
    batches = [clips[i : i + EMBED_BATCH] for i in range(0, len(clips), EMBED_BATCH)]
    model.embed_audio(batches[0])  # warm-up: first-call allocations and lazy initialisation
    timed = batches[1:]
    start = time.perf_counter()
    for batch in timed:
        model.embed_audio(batch)
    seconds = time.perf_counter() - start
    count = sum(len(b) for b in timed)
    return [
        common.Row(f"load clap {backend}", "tiny model", load_seconds),
        common.Row(
            f"embed {backend}",
            f"{count} clips x {EMBED_CLIP_SECONDS:g} s",
            seconds,
            count / seconds,
            "clips/s",
            note=f"batch {EMBED_BATCH}, {len(timed)} batches + 1 warm-up",
        ),
    ]


def ratio_lines(embed_rows: list[common.Row], standardize: common.Row) -> list[str]:
    rates = {r.measurement.removeprefix("embed "): r.rate for r in embed_rows if r.rate is not None}
    lines = [f"embed laion_clap / transformers clips/s: {rates['laion_clap'] / rates['transformers']:.2f}"]
    for backend, rate in rates.items():
        lines.append(f"standardize / embed {backend} clips/s: {standardize.rate / rate:.2f}")
    return lines


def bench(args: argparse.Namespace, rng: np.random.Generator) -> None:
    sizes = QUICK if args.quick else FULL

    import torch

    common.print_machine(args.quick, f"torch threads {torch.get_num_threads()}")
    rows: list[common.Row] = []
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        work = Path(tmp)
        standardize = bench_standardize(work, sizes.source_files, rng)
        rows.append(standardize)

        start = time.perf_counter()
        with quiet_stdout():
            models = build_all(work / "models", seed=args.seed)
        rows.append(common.Row("build tiny models", "both backends", time.perf_counter() - start))
        clips = [synthetic_audio(rng, EMBED_CLIP_SECONDS, CLAP_SAMPLE_RATE, 1)[:, 0] for _ in range(sizes.embed_clips)]
        embed_rows = []
        for backend, config in clap_configs(models).items():
            embed_rows += bench_embed(backend, config, clips)
        rows += embed_rows

    common.print_report(rows, ratio_lines(embed_rows, standardize))


if __name__ == "__main__":
    common.run(__doc__, bench)
