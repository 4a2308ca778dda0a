"""FAISS indexes over L2-normalized embeddings, where inner product is cosine similarity.

`flat` is exact. `ivf` and `hnsw` are approximate; `recall_at_k` measures them against exact search
so that every approximate index is reported with its recall.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from schemas.config import IndexConfig

# FAISS warns below 39 training points per IVF cell.
MIN_POINTS_PER_CELL = 39


def ivf_cells(n_vectors: int, requested: int | None) -> int:
    """Cells for an IVF index over n vectors: the request, or 4*sqrt(n), never more than n/39."""
    cells = requested if requested is not None else int(4 * math.sqrt(n_vectors))
    return max(1, min(cells, n_vectors // MIN_POINTS_PER_CELL))


def build_index(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An index holding `vectors` in row order: search results are row numbers."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    else:
        cells = ivf_cells(len(vectors), config.nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(config.nprobe, cells)
    index.add(vectors)
    return index


def add_to_index(index: faiss.Index, vectors: np.ndarray) -> None:
    """Grow an index in place; new rows are numbered after the existing ones."""
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) per query; rows are -1 where the index holds fewer than k vectors."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def recall_at_k(approximate_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate top-k also returns."""
    k = exact_rows.shape[1]
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approximate_rows, exact_rows)]
    return float(np.mean(hits) / k) if hits else 1.0


def measure_recall(index: faiss.Index, vectors: np.ndarray, config: IndexConfig, seed: int) -> float:
    """recall@k of `index` against exact search, with pool vectors as queries."""
    rng = np.random.default_rng(seed)
    count = min(config.recall_queries, len(vectors))
    queries = vectors[rng.choice(len(vectors), size=count, replace=False)]
    k = min(config.recall_k, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, exact_rows = search(exact, queries, k)
    _, approximate_rows = search(index, queries, k)
    return recall_at_k(approximate_rows, exact_rows)


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
