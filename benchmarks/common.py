"""Pieces the benchmark scripts share: the command line, clustered index data, index timing and the
printed report. Imported as `benchmarks.common` once a script has put the repository root on sys.path."""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from schemas.config import IndexConfig, RetrievalConfig
from stages.search.faiss_index import RecallTarget, build_index, search_queries

T = TypeVar("T")

INDEX_DIM = 512
INDEX_CENTERS = 1000
# Repeat a search at least this often and this long, so fast searches are not timed on one run of a few ms.
MIN_SEARCH_RUNS = 3
MIN_SEARCH_SECONDS = 0.5


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink every size for a fast smoke run")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def run(description: str, bench: Callable[[argparse.Namespace, np.random.Generator], None]) -> None:
    """A script's entry point: `bench` with the parsed command line and a generator seeded from it,
    then the total wall time."""
    args = parse_args(description)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    bench(args, rng)
    print(f"total wall time {time.perf_counter() - start:.0f} s")


def timed(function: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


# ----------------------------------------------------------------------------------------- index data


def cluster_centers(rng: np.random.Generator) -> np.ndarray:
    """INDEX_CENTERS random unit vectors of INDEX_DIM dimensions."""
    centers = rng.standard_normal((INDEX_CENTERS, INDEX_DIM), dtype=np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def clustered_vectors(rng: np.random.Generator, centers: np.ndarray, count: int) -> np.ndarray:
    """Points around random cluster centers, L2-normalized like CLAP embeddings."""
    assigned = centers[rng.integers(len(centers), size=count)]
    # Noise about as long as a center keeps clusters distinct but not trivially separable.
    noise = rng.standard_normal((count, centers.shape[1]), dtype=np.float32) / math.sqrt(centers.shape[1])
    points = assigned + noise
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def cluster_caveat(k: int) -> str:
    return (
        f"With N/{INDEX_CENTERS} points per cluster, a large N keeps each top-{k} inside one cluster,"
        "\nwhich makes approximate search easy there: recall on real embeddings may be lower."
    )


# ------------------------------------------------------------------------------------------ searching


def queries_per_second(run_search: Callable[[], np.ndarray], count: int) -> tuple[float, np.ndarray]:
    """Search rate of the fastest of several runs of the same query batch (the least disturbed by
    other load on the machine), and the rows found."""
    best, elapsed, runs = math.inf, 0.0, 0
    while runs < MIN_SEARCH_RUNS or elapsed < MIN_SEARCH_SECONDS:
        start = time.perf_counter()
        rows = run_search()
        seconds = time.perf_counter() - start
        best, elapsed, runs = min(best, seconds), elapsed + seconds, runs + 1
    return count / best, rows


def build_and_search(
    config: IndexConfig, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[float, float, np.ndarray]:
    """Build seconds of an index over `vectors`, its top-k queries/s searched as retrieval searches
    (`search_queries` at the default retrieval.target_recall), and the rows it finds."""
    build_s, index = timed(lambda: build_index(vectors, config))
    recall = RecallTarget.from_config(RetrievalConfig())
    qps, rows = queries_per_second(lambda: search_queries(index, queries, k, recall).rows, len(queries))
    return build_s, qps, rows


def projected_hnsw_seconds(measured_n: int, measured_s: float, n: int) -> float:
    """HNSW build cost grows about as n log n."""
    return measured_s * (n * math.log(n)) / (measured_n * math.log(measured_n))


# --------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    measurement: str
    size: str
    seconds: float | None
    rate: float | None = None
    unit: str = ""
    recall: str = ""
    note: str = ""

    def seconds_text(self) -> str:
        return "" if self.seconds is None else f"{self.seconds:.2f}"

    def rate_text(self) -> str:
        if self.rate is None:
            return ""
        return f"{self.rate:,.0f} {self.unit}" if self.rate >= 100 else f"{self.rate:.1f} {self.unit}"


def print_machine(quick: bool, *details: str) -> None:
    """The line that heads the output: core count, the given thread counts or versions, and the size set."""
    print(", ".join([f"cpus {os.cpu_count()}", *details]) + (", quick sizes" if quick else ""))


def print_table(rows: list[Row]) -> None:
    cells = [["measurement", "size", "seconds", "rate", "recall@10", "note"]]
    cells += [[r.measurement, r.size, r.seconds_text(), r.rate_text(), r.recall, r.note] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for number, line in enumerate(cells):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if number == 0:
            print("-+-".join("-" * w for w in widths))


def print_report(rows: list[Row], ratio_lines: list[str]) -> None:
    """The table, then the ratios between its measurements."""
    print()
    print_table(rows)
    print()
    print("Ratios (same run, back to back; rely on these rather than absolute figures):")
    for line in ratio_lines:
        print(f"  {line}")
