"""Concept-text search: the index kinds side by side, then, at pool scale, the retrieval path against
one batched FAISS call and the auto (IVF) index at the recall target against exact search; printed
as one table.

    .venv/bin/python -m benchmarks.search [--quick] [--threads N] [--seed S]

1. Index kinds: `build_index` of each pool.index.kind over 10K and 100K vectors (--quick: 10K),
   searched as retrieval searches them (`search_queries` at retrieval.target_recall): build seconds,
   queries/s and recall@10 against flat. An HNSW build projected (n log n) past
   HNSW_BUILD_BUDGET_S is left out and says so.
2. Exact at pool scale (500K x 512; --quick: 100K): `search_at` on a flat index, with the queries of
   one chunk, against one `index.search(all_queries, k)` call on the same IndexFlatIP.
3. Approximate at pool scale: the default `auto` index (IVF at this size). As a retrieval actor
   does, `search_queries` chooses nprobe on retrieval.calibration_queries of the queries for
   recall@10 >= 0.95, all queries are searched at that nprobe, and every retrieval.recall_every-th
   chunk `sample_recall` measures recall on retrieval.recall_sample of them. Shown: the nprobe, the
   calibration recall, a measured chunk's sampled recall, the recall of all queries against exact
   search, and the chunk's search speed (the sample's exact search counted at its share) against
   the exact flat call.

Data. Pool vectors stand for CLAP audio embeddings: CLUSTERS centres drawn uniformly on the unit
sphere; each vector is a centre plus isotropic Gaussian noise whose length is the cluster's
spread (drawn per cluster from SPREAD, in units of the centre's length), L2-normalized. Queries
stand for CLAP text embeddings of concepts: a random cluster's centre plus one gap vector G, the
same for every query (CLIP/CLAP's modality gap: text embeddings sit in a region of their own), plus
isotropic noise of length QUERY_NOISE, L2-normalized. |G| is GAP_NORM, so a query's cosine to the
points of its own cluster is about 0.4, like real CLAP text-to-audio cosines, while points of other
clusters sit near 0. Pool vectors are never used as queries: they sit on the side of the gap where
the index was trained, which is not where retrieval's queries are.

Timings are on a machine that may be shared: each measurement is the fastest of ROUNDS runs, taken
in turns, with the same FAISS thread count on both sides of every ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import faiss
import numpy as np

from benchmarks.common import fastest, timed
from schemas.config import IndexConfig, RetrievalConfig
from stages.search.faiss_index import (
    RecallTarget,
    build_index,
    exact_search,
    index_kind,
    recall_at_k,
    sample_recall,
    sample_rows,
    search_at,
    search_queries,
)

CLUSTERS = 1500
SPREAD = (0.5, 1.3)
GAP_NORM = 1.2
QUERY_NOISE = 1.0
ROUNDS = 3
# Index kinds side by side: pool sizes, queries per size, and the longest HNSW build that is run.
KIND_SIZES = {"full": (10_000, 100_000), "quick": (10_000,)}
KIND_QUERIES = 1000
RECALL_K = 10
HNSW_BUILD_BUDGET_S = 90.0
# Vectors generated per step, so the temporaries stay a small fraction of the pool.
GENERATE_STEP = 50_000

EXACT_TARGET = 0.8
APPROXIMATE_TARGET = 20.0


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_data(
    n_vectors: int, dim: int, queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pool vectors, queries across the gap, and the cluster of each (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((CLUSTERS, dim), dtype=np.float32))
    spread = rng.uniform(*SPREAD, size=CLUSTERS).astype(np.float32)
    pool_cluster = rng.integers(CLUSTERS, size=n_vectors)
    pool = np.empty((n_vectors, dim), dtype=np.float32)
    for start in range(0, n_vectors, GENERATE_STEP):
        c = pool_cluster[start : start + GENERATE_STEP]
        # Noise of length ~1 per row, scaled by the cluster's spread.
        noise = rng.standard_normal((len(c), dim), dtype=np.float32) / math.sqrt(dim)
        pool[start : start + len(c)] = unit_rows(centres[c] + spread[c, None] * noise)
    gap = GAP_NORM * unit_rows(rng.standard_normal((1, dim), dtype=np.float32))
    query_cluster = rng.integers(CLUSTERS, size=queries)
    noise = QUERY_NOISE * rng.standard_normal((queries, dim), dtype=np.float32) / math.sqrt(dim)
    return pool, unit_rows(centres[query_cluster] + gap + noise), pool_cluster, query_cluster


def own_cluster_cosine(
    pool: np.ndarray, queries: np.ndarray, pool_cluster: np.ndarray, query_cluster: np.ndarray
) -> float:
    """Mean cosine between a query and the points of its own cluster (200 queries)."""
    members = {}
    cosines = []
    for q, c in zip(queries[:200], query_cluster[:200]):
        rows = members.setdefault(c, np.flatnonzero(pool_cluster == c))
        cosines.append(float(np.mean(pool[rows] @ q)))
    return float(np.mean(cosines))


def row(measure: str, value: float | int | str, target: float | None = None) -> dict:
    met = None if target is None else value >= target
    return {"measure": measure, "value": value, "target": target, "met": met}


def measure_search(
    n_vectors: int = 500_000,
    dim: int = 512,
    queries: int = 4000,
    k: int | None = None,
    threads: int | None = None,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> list[dict]:
    """Rows of (measure, value, target, met); target and met are None for rows shown for information."""
    k = k if k is not None else RetrievalConfig().search_k
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    retrieval = RetrievalConfig()
    recall = RecallTarget.from_config(retrieval)
    pool, query_vectors, pool_cluster, query_cluster = make_data(n_vectors, dim, queries, seed)
    rows = [
        row("cores on this machine", os.cpu_count() or 0),
        row("FAISS threads, both sides of every ratio", faiss.omp_get_max_threads()),
        row(
            "mean cosine of a query to its own cluster's points",
            round(own_cluster_cosine(pool, query_vectors, pool_cluster, query_cluster), 3),
        ),
    ]

    flat = build_index(pool, IndexConfig(kind="flat"))
    # Quick sizes sit below the default exact_below; lowering it to the pool size still builds
    # what auto builds at scale.
    config = IndexConfig(exact_below=min(IndexConfig().exact_below, n_vectors))
    build_start = time.perf_counter()
    index = build_index(pool, config, seed)
    build_s = time.perf_counter() - build_start
    del pool
    # What each retrieval actor does once: choose the setting on calibration_queries of the run's texts.
    calibration_set = query_vectors[sample_rows(queries, retrieval.calibration_queries)]
    calibration_target = RecallTarget(recall.target, recall.recall_k, len(calibration_set))
    calibration_s, calibration = fastest(
        {"calibrate": lambda: search_queries(index, calibration_set, k, calibration_target)}, 1
    )
    calibration = calibration["calibrate"]
    sample = query_vectors[sample_rows(queries, recall.sample_size)]

    # Both sides of both ratios in the same rounds, so a burst of load elsewhere hits them alike.
    seconds, results = fastest(
        {
            "one call": lambda: flat.search(query_vectors, k),
            "flat search_at": lambda: search_at(flat, query_vectors, k, None),
            "approximate": lambda: search_at(index, query_vectors, k, calibration.setting),
            "sample exact": lambda: exact_search(index, sample, recall.recall_k),
        },
        rounds,
    )
    exact_rows = results["one call"][1]
    assert np.array_equal(results["flat search_at"][1], exact_rows), "the flat search must equal the one call"
    exact_qps = queries / seconds["one call"]
    approximate_rows = results["approximate"][1]
    chunk_recall, chunk_sampled = sample_recall(
        index, query_vectors, approximate_rows, recall.sample_size, recall.recall_k
    )
    # Every recall_every-th chunk also runs the exact search of its sample.
    chunk_seconds = seconds["approximate"] + seconds["sample exact"] / retrieval.recall_every
    size = f"{n_vectors // 1000}K x {dim}, {queries:,} queries, k={k}"
    rows += [
        row(f"exact one batched FAISS call, queries/s ({size})", round(exact_qps)),
        row(
            f"exact search queries/s / one batched FAISS flat call on the same index, {size}",
            round(seconds["one call"] / seconds["flat search_at"], 2),
            EXACT_TARGET,
        ),
        row(
            f"auto index built: kind, nlist (pool.index.exact_below {config.exact_below:,})",
            f"{index_kind(config, n_vectors)}, {getattr(index, 'nlist', None)}",
        ),
        row("auto index build seconds (IVF k-means on its bounded sample)", round(build_s, 1)),
        row(
            f"nprobe chosen on {calibration.sample_size} calibration queries "
            f"(ladder from pool.index.nprobe {config.nprobe}); seconds, once per actor",
            f"{calibration.setting}; {calibration_s['calibrate']:.1f} s",
        ),
        row(f"recall@{recall.recall_k} on the calibration queries", round(calibration.recall, 3)),
        row(
            f"recall@{recall.recall_k} on a measured chunk's sample of {chunk_sampled} (what the run summary adds up)",
            round(chunk_recall, 3),
        ),
        row(
            f"recall@{recall.recall_k} over all {queries:,} queries vs exact",
            round(recall_at_k(approximate_rows[:, : recall.recall_k], exact_rows[:, : recall.recall_k]), 3),
            recall.target,
        ),
        row(
            f"approximate search at recall@{recall.recall_k} >= {recall.target} on concept-text queries / exact (x), "
            "recall measurement amortized",
            round(seconds["one call"] / chunk_seconds, 1),
            APPROXIMATE_TARGET,
        ),
        row(
            f"exact search of {len(sample)} sampled queries / the approximate search of all "
            f"(once per {retrieval.recall_every} chunks)",
            round(seconds["sample exact"] / seconds["approximate"], 2),
        ),
    ]
    return rows


def projected_hnsw_seconds(measured_n: int, measured_s: float, n: int) -> float:
    """HNSW build cost grows about as n log n."""
    return measured_s * (n * math.log(n)) / (measured_n * math.log(measured_n))


def measure_index_kinds(sizes: tuple[int, ...], dim: int = 512, seed: int = 0) -> list[dict]:
    """Build seconds, queries/s and recall@10 against flat of every index kind at each pool size."""
    recall = RecallTarget.from_config(RetrievalConfig())
    k = RetrievalConfig().search_k
    rows, hnsw_probe = [], None
    for n in sizes:
        pool, queries, _, _ = make_data(n, dim, KIND_QUERIES, seed)
        exact_rows = None
        for kind in ("flat", "ivf", "hnsw"):
            if kind == "hnsw" and hnsw_probe is not None:
                projected = projected_hnsw_seconds(*hnsw_probe, n)
                if projected > HNSW_BUILD_BUDGET_S:
                    rows.append(row(f"index hnsw, N={n:,}", f"left out: build projected at {projected:.0f} s"))
                    continue
            build_s, index = timed(lambda: build_index(pool, IndexConfig(kind=kind), seed))
            seconds, results = fastest({kind: lambda: search_queries(index, queries, k, recall).rows}, ROUNDS)
            found = results[kind]
            if kind == "flat":
                exact_rows, measured = found, "exact"
            else:
                measured = f"{recall_at_k(found[:, :RECALL_K], exact_rows[:, :RECALL_K]):.3f}"
            if kind == "hnsw":
                hnsw_probe = (n, build_s)
            value = (
                f"build {build_s:.1f} s, {len(queries) / seconds[kind]:,.0f} queries/s, recall@{RECALL_K} {measured}"
            )
            rows.append(row(f"index {kind}, N={n:,}, {len(queries):,} queries, k={k}", value))
    return rows


def print_rows(rows: list[dict]) -> None:
    cells = [["measure", "value", "target", "met"]]
    for r in rows:
        target = "" if r["target"] is None else f">= {r['target']:g}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        cells.append([r["measure"], str(r["value"]), target, met])
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    for number, line in enumerate(cells):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if number == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="index kinds at 10K only, and 100K vectors at pool scale instead of 500K"
    )
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    n_vectors = 100_000 if args.quick else 500_000
    faiss.omp_set_num_threads(args.threads or os.cpu_count() or 1)
    kinds = measure_index_kinds(KIND_SIZES["quick" if args.quick else "full"], seed=args.seed)
    rows = kinds + measure_search(n_vectors=n_vectors, threads=args.threads, seed=args.seed)
    print_rows(rows)
    print(
        f"\ndata: {n_vectors:,} pool vectors around {CLUSTERS} centres uniform on the unit sphere, isotropic noise "
        f"of per-cluster spread U{SPREAD} x the centre's length, normalized;\nqueries: a cluster's centre + one gap "
        f"vector of norm {GAP_NORM} shared by all queries + noise of norm {QUERY_NOISE}, normalized "
        f"(across a modality gap; pool vectors are never queries).\nseconds: fastest of {ROUNDS} runs taken in turns; "
        "timings on a shared machine are noisy, rely on the ratios.\n"
        f"total wall time {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
