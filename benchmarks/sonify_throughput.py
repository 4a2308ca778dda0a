"""Throughput of the sonify stages' hot loops on this machine, measured in one run and printed as one table.

    .venv/bin/python benchmarks/sonify_throughput.py [--quick]

1. retrieval: top-K search (K = retrieval.search_k = 64) over clustered, L2-normalized 512-d vectors,
   by a brute-force numpy baseline (chunked queries @ pool.T, argpartition, sort) and by the
   `stages.search.faiss_index` flat, ivf and hnsw indexes searched as retrieval searches them
   (`search_queries`, nprobe or efSearch chosen per call for retrieval.target_recall): build
   time, queries/s and recall@10 against exact (flat) search.
2. mixing: 3-source mixes the pipeline's way (gains from loudness stored once per clip,
   `gains_db` + `mix_sources`) against a naive mixer that measures every source's loudness again
   in every mix; both must give the same audio.

Absolute timings on a shared machine are noisy; the ratios printed under the table compare
measurements taken back to back in the same process and are the figures to rely on.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from schemas.config import IndexConfig, MixConfig, RetrievalConfig  # noqa: E402
from stages.audio.loudness import integrated_lufs  # noqa: E402
from stages.audio.mixing import Mix, draw_targets, gains_db, mix_sources  # noqa: E402
from stages.search.faiss_index import TRAIN_POINTS_PER_CELL, ivf_cells, recall_at_k  # noqa: E402

SEARCH_K = RetrievalConfig().search_k
RECALL_K = 10
# The numpy baseline scores queries in chunks of about this many floats, so its score matrix stays
# small (64 MB) at any pool size.
NUMPY_SCORE_FLOATS = 16_000_000
# Projected builds longer than these are not run: HNSW is skipped, IVF gets fewer cells.
HNSW_BUILD_BUDGET_S = {"full": 120.0, "quick": 30.0}
IVF_BUILD_BUDGET_S = 90.0
IVF_FALLBACK_NLIST = 1024

MIX_RATE = 16000
MIX_SECONDS = 5.0
MIX_SOURCES = 3
MIX_BANK_CLIPS = 60


@dataclass
class Sizes:
    name: str
    index_sizes: tuple[int, ...]
    queries: dict[int, int]  # held-out queries per pool size
    mixes: int


FULL = Sizes("full", (10_000, 100_000, 500_000), {10_000: 1000, 100_000: 1000, 500_000: 200}, mixes=300)
QUICK = Sizes("quick", (10_000, 100_000), {10_000: 200, 100_000: 200}, mixes=50)


# ----------------------------------------------------------------------------------------- retrieval


def numpy_top_k(pool: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) by inner product, best first, without any index."""
    chunk = max(1, NUMPY_SCORE_FLOATS // len(pool))
    all_scores, all_rows = [], []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ pool.T
        rows = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(scores, rows, axis=1)
        order = np.argsort(-top, axis=1)
        all_scores.append(np.take_along_axis(top, order, axis=1))
        all_rows.append(np.take_along_axis(rows, order, axis=1))
    return np.concatenate(all_scores), np.concatenate(all_rows)


@dataclass
class SearchResult:
    method: str  # numpy, flat, ivf, hnsw
    n: int
    queries: int
    build_s: float | None  # None: no build (numpy) or not run
    qps: float | None  # None: not run
    recall: float | None  # None: exact by construction (flat) or not run
    note: str = ""


def bench_numpy(pool: np.ndarray, queries: np.ndarray) -> tuple[SearchResult, np.ndarray]:
    qps, rows = common.queries_per_second(lambda: numpy_top_k(pool, queries, SEARCH_K)[1], len(queries))
    chunk = min(len(queries), max(1, NUMPY_SCORE_FLOATS // len(pool)))
    return SearchResult(
        "numpy", len(pool), len(queries), None, qps, None, f"no build; {chunk} queries per matmul"
    ), rows


def bench_index(
    method: str,
    config: IndexConfig,
    pool: np.ndarray,
    queries: np.ndarray,
    exact_rows: np.ndarray | None,
    note: str = "",
) -> tuple[SearchResult, np.ndarray]:
    """Build time, queries/s and recall@10 against `exact_rows` (None: this index is the exact one)."""
    build_s, qps, rows = common.build_and_search(config, pool, queries, SEARCH_K)
    recall = None if exact_rows is None else recall_at_k(rows[:, :RECALL_K], exact_rows[:, :RECALL_K])
    return SearchResult(method, len(pool), len(queries), build_s, qps, recall, note), rows


def ivf_training_work(n: int, nlist: int) -> float:
    """k-means cost of an IVF build: `build_index` trains on at most TRAIN_POINTS_PER_CELL * nlist
    vectors, and each iteration compares every training vector with every centroid."""
    return min(n, TRAIN_POINTS_PER_CELL * nlist) * nlist


def projected_ivf_seconds(measured: SearchResult, n: int, nlist: int) -> float:
    measured_work = ivf_training_work(measured.n, ivf_cells(measured.n, None))
    return measured.build_s * ivf_training_work(n, ivf_cells(n, nlist)) / measured_work


def ivf_config(n: int, previous: SearchResult | None) -> tuple[IndexConfig, str]:
    """Default cells, or IVF_FALLBACK_NLIST when the default build is projected over budget."""
    if previous is None:
        return IndexConfig(kind="ivf"), ""
    projected = projected_ivf_seconds(previous, n, None)
    if projected <= IVF_BUILD_BUDGET_S:
        return IndexConfig(kind="ivf"), ""
    fallback = projected_ivf_seconds(previous, n, IVF_FALLBACK_NLIST)
    note = (
        f"nlist={IVF_FALLBACK_NLIST}: default {ivf_cells(n, None)} cells projected at {projected:.0f} s "
        f"> {IVF_BUILD_BUDGET_S:.0f} s (this one {fallback:.0f} s)"
    )
    return IndexConfig(kind="ivf", nlist=IVF_FALLBACK_NLIST), note


def bench_size(
    n: int, pool: np.ndarray, queries: np.ndarray, previous: list[SearchResult], hnsw_budget_s: float
) -> list[SearchResult]:
    """numpy, flat, ivf and hnsw at one pool size; hnsw is skipped when its projected build is too long."""
    by_method = {r.method: r for r in previous if r.build_s is not None}
    numpy_result, numpy_rows = bench_numpy(pool, queries)
    flat, exact_rows = bench_index("flat", IndexConfig(kind="flat"), pool, queries, None)
    numpy_result.recall = recall_at_k(numpy_rows[:, :RECALL_K], exact_rows[:, :RECALL_K])
    config, note = ivf_config(n, by_method.get("ivf"))
    ivf, _ = bench_index("ivf", config, pool, queries, exact_rows, note)
    results = [numpy_result, flat, ivf]

    probe = by_method.get("hnsw")
    projected = common.projected_hnsw_seconds(probe.n, probe.build_s, n) if probe is not None else 0.0
    if projected > hnsw_budget_s:
        note = (
            f"skipped: build projected at {projected:.0f} s > {hnsw_budget_s:.0f} s "
            f"(n log n from {probe.build_s:.1f} s measured at N={probe.n:,})"
        )
        results.append(SearchResult("hnsw", n, len(queries), None, None, None, note))
    else:
        hnsw, _ = bench_index("hnsw", IndexConfig(kind="hnsw"), pool, queries, exact_rows)
        results.append(hnsw)
    return results


def search_row(result: SearchResult) -> common.Row:
    if result.method == "flat":
        recall = "exact"
    else:
        recall = "" if result.recall is None else f"{result.recall:.3f}"
    name = "search numpy brute force" if result.method == "numpy" else f"search index {result.method}"
    note = "; ".join(part for part in ("seconds = build" if result.build_s is not None else "", result.note) if part)
    return common.Row(
        name, f"N={result.n:,}, {result.queries} q", result.build_s, result.qps, "queries/s", recall, note
    )


def bench_retrieval(sizes: Sizes, rng: np.random.Generator) -> list[SearchResult]:
    centers = common.cluster_centers(rng)
    results: list[SearchResult] = []
    for n in sizes.index_sizes:
        queries = common.clustered_vectors(rng, centers, sizes.queries[n])
        pool = common.clustered_vectors(rng, centers, n)
        results += bench_size(n, pool, queries, results, HNSW_BUILD_BUDGET_S[sizes.name])
        del pool  # the 500K pool and its index copies are gigabytes
    return results


# -------------------------------------------------------------------------------------------- mixing


def synthetic_clip(rng: np.random.Generator, index: int) -> np.ndarray:
    """Tone, noise or both, at levels spread over about 40 dB, so gains differ from clip to clip."""
    t = np.arange(int(MIX_SECONDS * MIX_RATE)) / MIX_RATE
    level = 10 ** (rng.uniform(-45, -5) / 20)
    tone = np.sin(2 * np.pi * rng.uniform(80, 4000) * t)
    noise = rng.standard_normal(t.size)
    kind = index % 3
    signal = tone if kind == 0 else noise if kind == 1 else 0.7 * tone + 0.3 * noise
    return (level * signal).astype(np.float32)


def naive_mix(sources: list[np.ndarray], targets_lufs: np.ndarray, peak_ceiling_dbfs: float) -> np.ndarray:
    """Measure every source again, gain it to its target, sum, and scale under the ceiling."""
    total = np.zeros(sources[0].shape[0], dtype=np.float64)
    for audio, target in zip(sources, targets_lufs):
        gain_db = target - integrated_lufs(audio, MIX_RATE)
        total += 10.0 ** (gain_db / 20.0) * audio.astype(np.float64)
    ceiling = 10.0 ** (peak_ceiling_dbfs / 20.0)
    peak = np.max(np.abs(total))
    if peak > ceiling:
        total *= ceiling / peak
    return total.astype(np.float32)


def bench_mixing(mix_count: int, rng: np.random.Generator) -> tuple[list[common.Row], str]:
    config = MixConfig()
    bank = [synthetic_clip(rng, i) for i in range(MIX_BANK_CLIPS)]
    # The pool measures each clip once when it is built; that is the one-time cost the pipeline pays.
    loudness_s, stored = common.timed(lambda: [integrated_lufs(clip, MIX_RATE) for clip in bank])
    stored_lufs = np.array(stored)
    picks = [rng.choice(MIX_BANK_CLIPS, size=MIX_SOURCES, replace=False) for _ in range(mix_count)]
    targets = [draw_targets(rng, MIX_SOURCES, config.lufs_min, config.lufs_max) for _ in range(mix_count)]

    def pipeline() -> list[Mix]:
        return [
            mix_sources([bank[i] for i in pick], gains_db(target, stored_lufs[pick]), config.peak_dbfs)
            for pick, target in zip(picks, targets)
        ]

    def naive() -> list[np.ndarray]:
        return [naive_mix([bank[i] for i in pick], target, config.peak_dbfs) for pick, target in zip(picks, targets)]

    pipeline_s, pipeline_mixes = common.timed(pipeline)
    naive_s, naive_mixes = common.timed(naive)
    same = all(np.allclose(p.audio, q) for p, q in zip(pipeline_mixes, naive_mixes))
    max_diff = max(float(np.max(np.abs(p.audio - q))) for p, q in zip(pipeline_mixes, naive_mixes))
    scaled = sum(p.mix_gain_db < 0 for p in pipeline_mixes)
    size = f"{mix_count} mixes x {MIX_SOURCES} x {MIX_SECONDS:g} s"
    rows = [
        common.Row(
            "loudness once per clip",
            f"{MIX_BANK_CLIPS} clips x {MIX_SECONDS:g} s",
            loudness_s,
            MIX_BANK_CLIPS / loudness_s,
            "clips/s",
            note="pool build cost, not timed below",
        ),
        common.Row(
            "mix pipeline (stored lufs)",
            size,
            pipeline_s,
            mix_count / pipeline_s,
            "mixes/s",
            note=f"gains_db + mix_sources at {MIX_RATE} Hz; {scaled} mixes scaled under {config.peak_dbfs:g} dBFS",
        ),
        common.Row(
            "mix naive (measure per mix)",
            size,
            naive_s,
            mix_count / naive_s,
            "mixes/s",
            note="integrated_lufs of every source in every mix",
        ),
    ]
    check = (
        f"mix audio identical: np.allclose {'holds' if same else 'FAILS'} for all {mix_count} mixes "
        f"(max |diff| {max_diff:.1e})"
    )
    return rows, check


# ------------------------------------------------------------------------------------------- report


def ratio_lines(search_results: list[SearchResult], mix_rows: list[common.Row]) -> list[str]:
    lines = []
    baselines = {r.n: r for r in search_results if r.method == "numpy"}
    for result in search_results:
        if result.method == "numpy" or result.qps is None:
            continue
        baseline = baselines[result.n]
        recall = "exact" if result.method == "flat" else f"recall@10 {result.recall:.3f}"
        lines.append(f"{result.method} / numpy queries/s at N={result.n:,}: {result.qps / baseline.qps:.2f} ({recall})")
    rates = {r.measurement.split()[1]: r.rate for r in mix_rows if r.unit == "mixes/s"}
    lines.append(f"mix pipeline / naive mixes/s: {rates['pipeline'] / rates['naive']:.2f}")
    return lines


def bench(args: argparse.Namespace, rng: np.random.Generator) -> None:
    sizes = QUICK if args.quick else FULL

    import faiss

    common.print_machine(
        args.quick,
        f"faiss threads {faiss.omp_get_max_threads()}",
        f"numpy {np.__version__}",
        f"faiss {faiss.__version__}",
    )
    search_results = bench_retrieval(sizes, rng)
    mix_rows, mix_check = bench_mixing(sizes.mixes, rng)
    rows = [search_row(r) for r in search_results] + mix_rows

    common.print_report(rows, ratio_lines(search_results, mix_rows) + [mix_check])
    print(
        f"\nsearch data: {common.INDEX_CENTERS} clusters, held-out queries, K={SEARCH_K} (retrieval.search_k), "
        f"recall@{RECALL_K}"
        f" from the first {RECALL_K} of the K rows, IndexConfig defaults unless noted,\nsearched through search_queries"
        " at the default retrieval.target_recall (benchmarks/scale_search.py: queries across a modality gap)."
    )
    print(common.cluster_caveat(RECALL_K))
    print("queries/s is the best of several runs of the whole query batch.")


if __name__ == "__main__":
    common.run(__doc__, bench)
