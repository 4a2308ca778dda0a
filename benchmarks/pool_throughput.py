"""Throughput of the audio-pool stages on this machine, measured in one run and printed as one table.

    .venv/bin/python benchmarks/pool_throughput.py [--quick]

1. standardize: `Standardize.process_part` (no Ray) on one part of synthetic source files.
2. embed: `embed_audio` of both CLAP backends, with the tiny random models from `build_all`.
3. index: flat, ivf and hnsw over clustered, L2-normalized 512-d vectors, searched as retrieval
   searches them (`search_queries`): build time, queries/s and recall@10 against exact (flat) search.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from demo.tiny_models import build_all  # noqa: E402
from schemas.config import ClapConfig, IndexConfig, PoolConfig  # noqa: E402
from stages.audio.standardize_stage import Standardize  # noqa: E402
from stages.embed.clap import CLAP_SAMPLE_RATE, load_clap  # noqa: E402
from stages.search.faiss_index import recall_at_k  # noqa: E402

SOURCE_RATES = (16000, 44100, 48000)
EMBED_BATCH = 16
EMBED_CLIP_SECONDS = 5.0
INDEX_QUERIES = 1000
INDEX_K = 10
# An HNSW build projected to take longer than this is made on fewer vectors, to keep the run short.
HNSW_BUILD_BUDGET_S = 90.0


@dataclass
class Sizes:
    source_files: int
    embed_clips: int
    index_sizes: tuple[int, ...]


FULL = Sizes(source_files=20, embed_clips=64, index_sizes=(10_000, 100_000))
QUICK = Sizes(source_files=8, embed_clips=16 + EMBED_BATCH, index_sizes=(10_000,))


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


def hnsw_size_within_budget(measured_n: int, measured_s: float, n: int) -> int:
    size = n
    while size > measured_n and common.projected_hnsw_seconds(measured_n, measured_s, size) > HNSW_BUILD_BUDGET_S:
        size = int(size * 0.9)
    return max(size, measured_n)


@dataclass
class IndexResult:
    kind: str
    n: int
    build_s: float
    qps: float
    recall: float


def bench_one_index(
    kind: str, vectors: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray | None
) -> tuple[IndexResult, np.ndarray]:
    """Build time, queries/s and recall@k against `exact_rows` (None: this index is the exact one)."""
    build_s, qps, rows = common.build_and_search(IndexConfig(kind=kind), vectors, queries, INDEX_K)
    recall = 1.0 if exact_rows is None else recall_at_k(rows, exact_rows)
    return IndexResult(kind, len(vectors), build_s, qps, recall), rows


def bench_index_size(
    n: int, vectors: np.ndarray, queries: np.ndarray, hnsw_probe: IndexResult | None
) -> tuple[list[IndexResult], str]:
    """flat, ivf and hnsw over n vectors; hnsw over fewer when its projected build is too long."""
    flat, exact_rows = bench_one_index("flat", vectors, queries, None)
    ivf, _ = bench_one_index("ivf", vectors, queries, exact_rows)
    results = [flat, ivf]

    hnsw_n, note = n, ""
    if hnsw_probe is not None:
        hnsw_n = hnsw_size_within_budget(hnsw_probe.n, hnsw_probe.build_s, n)
        if hnsw_n < n:
            projected = common.projected_hnsw_seconds(hnsw_probe.n, hnsw_probe.build_s, n)
            note = (
                f"hnsw capped to {hnsw_n:,} vectors: "
                f"N={n:,} projected at {projected:.0f} s > {HNSW_BUILD_BUDGET_S:.0f} s"
            )
    if hnsw_n < n:
        # The capped hnsw is compared with a flat index over the same subset.
        vectors = vectors[:hnsw_n]
        flat_subset, exact_rows = bench_one_index("flat", vectors, queries, None)
        results.append(flat_subset)
    hnsw, _ = bench_one_index("hnsw", vectors, queries, exact_rows)
    results.append(hnsw)
    return results, note


def index_row(result: IndexResult) -> common.Row:
    recall = "exact" if result.kind == "flat" else f"{result.recall:.3f}"
    return common.Row(
        f"index {result.kind}", f"N={result.n:,}", result.build_s, result.qps, "queries/s", recall, "seconds = build"
    )


def ratio_lines(embed_rows: list[common.Row], index_results: list[IndexResult], standardize: common.Row) -> list[str]:
    lines = []
    rates = {r.measurement.removeprefix("embed "): r.rate for r in embed_rows if r.rate is not None}
    lines.append(f"embed laion_clap / transformers clips/s: {rates['laion_clap'] / rates['transformers']:.2f}")
    for backend, rate in rates.items():
        lines.append(f"standardize / embed {backend} clips/s: {standardize.rate / rate:.2f}")
    flats = {r.n: r for r in index_results if r.kind == "flat"}
    for result in index_results:
        if result.kind == "flat":
            continue
        flat = flats[result.n]
        lines.append(
            f"{result.kind} / flat queries/s at N={result.n:,}: {result.qps / flat.qps:.2f} "
            f"(recall@10 {result.recall:.3f})"
        )
    return lines


def bench(args: argparse.Namespace, rng: np.random.Generator) -> None:
    sizes = QUICK if args.quick else FULL

    import faiss
    import torch

    common.print_machine(
        args.quick, f"torch threads {torch.get_num_threads()}", f"faiss threads {faiss.omp_get_max_threads()}"
    )
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

    centers = common.cluster_centers(rng)
    queries = common.clustered_vectors(rng, centers, INDEX_QUERIES)
    index_results: list[IndexResult] = []
    notes = []
    hnsw_probe = None
    for n in sizes.index_sizes:
        results, note = bench_index_size(n, common.clustered_vectors(rng, centers, n), queries, hnsw_probe)
        index_results += results
        hnsw_probe = next(r for r in results if r.kind == "hnsw")
        if note:
            notes.append(note)
    rows += [index_row(r) for r in index_results]

    common.print_report(rows, ratio_lines(embed_rows, index_results, standardize) + notes)
    print(
        f"\nindex data: {common.INDEX_CENTERS} clusters, {INDEX_QUERIES} held-out queries, k={INDEX_K}, "
        "IndexConfig defaults, searched through search_queries."
    )
    print(common.cluster_caveat(INDEX_K))


if __name__ == "__main__":
    common.run(__doc__, bench)
