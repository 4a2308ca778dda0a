"""FAISS indexes over L2-normalized embeddings, where inner product is cosine similarity.

`flat` is exact; `auto` builds it below `exact_below` vectors and IVF-Flat at or above. `ivf` and
`hnsw` are approximate: `search_queries` chooses their search setting by the recall it measures
on a set of queries, and `sample_recall` measures the recall of a search on a sample of its own
queries. Both take the run's concept texts as queries: pool vectors as queries would flatter an
approximate index, since text queries sit across a modality gap from the audio vectors they search.

A search may be limited to some of the index's rows (`AllowedRows`: the clips a mix may use), inside
FAISS's own search, so that a query's top-k are the best allowed clips however many better ones
are left out; exact search and the recall measured against it are limited alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from schemas.config import IndexConfig, RetrievalConfig

# FAISS warns below 39 training points per IVF cell.
MIN_POINTS_PER_CELL = 39
# k-means cost grows with its training points: this many per cell (FAISS wants 39 or more) keeps
# an IVF build over 500K vectors under a minute on 2 cores. Coarser centroids cost recall, which
# search_queries measures and makes up with nprobe.
TRAIN_POINTS_PER_CELL = 64
# Vectors scored per numpy product in exact search over one array: enough that the per-product
# overhead is small, few enough that the scores of a few queries stay small.
EXACT_BLOCK_ROWS = 65_536


def ivf_cells(n_vectors: int, requested: int | None) -> int:
    """Cells for an IVF index over n vectors: the request, or 4*sqrt(n), never more than n/39."""
    cells = requested if requested is not None else int(4 * math.sqrt(n_vectors))
    return max(1, min(cells, n_vectors // MIN_POINTS_PER_CELL))


def index_kind(config: IndexConfig, n_vectors: int) -> str:
    """The kind built for n vectors: flat, ivf or hnsw."""
    if config.kind != "auto":
        return config.kind
    return "flat" if n_vectors < config.exact_below else "ivf"


def training_sample(vectors: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """At most TRAIN_POINTS_PER_CELL vectors per cell, a seeded choice kept in row order."""
    count = min(len(vectors), TRAIN_POINTS_PER_CELL * cells)
    if count == len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=count, replace=False))
    return vectors[rows]


def build_index(vectors: np.ndarray, config: IndexConfig, seed: int = 0) -> faiss.Index:
    """An index holding `vectors` in row order: search results are row numbers. `seed` picks the
    IVF training sample."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    kind = index_kind(config, len(vectors))
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    else:
        cells = ivf_cells(len(vectors), config.nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(training_sample(vectors, cells, seed))
        index.nprobe = min(config.nprobe, cells)
    index.add(vectors)
    return index


def add_to_index(index: faiss.Index, vectors: np.ndarray) -> None:
    """Grow an index in place; new rows are numbered after the existing ones."""
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) per query at the index's own settings; rows are -1 where the index
    holds fewer than k vectors."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def recall_at_k(approximate_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate top-k also returns."""
    k = exact_rows.shape[1]
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approximate_rows, exact_rows)]
    return float(np.mean(hits) / k) if hits else 1.0


@dataclass(frozen=True)
class AllowedRows:
    """The index rows a search may return, where some are left out: a mask over the rows, for exact
    search, and the same rows as a FAISS selector, for the index's own search."""

    mask: np.ndarray  # bool, one per index row
    selector: faiss.IDSelector

    @classmethod
    def of(cls, mask: np.ndarray) -> AllowedRows | None:
        """The rows `mask` allows; None where it allows every row, so that a search without a filter
        stays the index's plain search."""
        mask = np.asarray(mask, dtype=bool)
        if mask.all():
            return None
        return cls(mask, faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64)))

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def flat_subset(index: faiss.IndexFlat, allowed: AllowedRows) -> faiss.IndexFlat:
    """A flat index of the `allowed` rows alone, in row order (row i of it is the i-th allowed row).
    A selector turns FAISS's flat search from one matrix product into a scan per query (five times
    slower measured at 200K x 512 with a third of the rows left out); searching this index instead
    keeps the product, at the cost of building it once."""
    subset = faiss.IndexFlat(index.d, index.metric_type)
    for vectors, rows in vector_blocks(index):
        subset.add(np.ascontiguousarray(vectors[allowed.mask[rows]]))
    return subset


def searchable_rows(index: faiss.Index, allowed: AllowedRows | None) -> int:
    """How many rows a search of `index` limited to `allowed` can return."""
    return index.ntotal if allowed is None else allowed.count


@dataclass(frozen=True)
class RecallTarget:
    """The recall@recall_k an approximate search must reach, measured on `sample_size` of its queries."""

    target: float
    recall_k: int
    sample_size: int

    @classmethod
    def from_config(cls, retrieval: RetrievalConfig) -> RecallTarget:
        return cls(retrieval.target_recall, retrieval.recall_k, retrieval.recall_sample)


@dataclass(frozen=True)
class SearchResult:
    """Top-k (scores, rows) of every query, and how they were found: `setting` is the nprobe (IVF)
    or efSearch (HNSW) used, `recall` the recall@recall_k it measured on `sample_size` of the
    queries; setting, recall and recall_k are None (and sample_size 0) for exact (flat) search,
    which measures nothing."""

    scores: np.ndarray
    rows: np.ndarray
    setting: int | None
    recall: float | None
    recall_k: int | None
    sample_size: int


def sample_rows(n_queries: int, size: int) -> np.ndarray:
    """`size` evenly spaced rows of n queries (all of them if fewer): the sample depends only on
    how many queries there are, so the same queries give the same sample."""
    count = min(size, n_queries)
    return np.arange(count) * n_queries // max(count, 1)


def _ladder(start: int, end: int) -> list[int]:
    """start, 2*start, 4*start, ... and `end` last."""
    rungs = [min(start, end)]
    while rungs[-1] < end:
        rungs.append(min(2 * rungs[-1], end))
    return rungs


def _setting_ladder(
    index: faiss.Index, allowed: AllowedRows | None = None
) -> tuple[list[int], Callable[[int], faiss.SearchParameters]]:
    """The rungs of an approximate index's search setting, from its own as built, and the search
    parameters of one rung (limited to `allowed`)."""
    selector = None if allowed is None else allowed.selector
    if isinstance(index, faiss.IndexIVFFlat):
        return _ladder(index.nprobe, index.nlist), lambda nprobe: faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
    if isinstance(index, faiss.IndexHNSWFlat):
        # No efSearch makes HNSW exact; one as large as the index is as close as it gets.
        ef = index.hnsw.efSearch
        return _ladder(ef, max(ef, index.ntotal)), lambda ef: faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
    raise TypeError(f"no search setting known for {type(index).__name__}")


def _parameters(index: faiss.Index, setting: int | None, allowed: AllowedRows | None) -> faiss.SearchParameters | None:
    """The search parameters of one search: at `setting` (None: the index's own), limited to `allowed`."""
    if isinstance(index, faiss.IndexFlat):
        return None if allowed is None else faiss.SearchParameters(sel=allowed.selector)
    if setting is None and allowed is None:
        return None
    own = index.nprobe if isinstance(index, faiss.IndexIVFFlat) else index.hnsw.efSearch
    return _setting_ladder(index, allowed)[1](own if setting is None else setting)


def vector_blocks(index: faiss.Index) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, rows) blocks covering every vector the index holds, as views of the index's own
    memory: the cells of an IVF-Flat, or slices of a flat index or of the flat storage under HNSW."""
    if isinstance(index, faiss.IndexIVFFlat):
        lists = index.invlists
        for cell in range(index.nlist):
            size = lists.list_size(cell)
            if size:
                codes = faiss.rev_swig_ptr(lists.get_codes(cell), size * lists.code_size)
                yield codes.view(np.float32).reshape(size, index.d), faiss.rev_swig_ptr(lists.get_ids(cell), size)
        return
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSWFlat) else index
    if not isinstance(flat, faiss.IndexFlat):
        raise TypeError(f"no exact search over {type(index).__name__}")
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    for start in range(0, flat.ntotal, EXACT_BLOCK_ROWS):
        yield vectors[start : start + EXACT_BLOCK_ROWS], np.arange(start, min(start + EXACT_BLOCK_ROWS, flat.ntotal))


def _candidates(
    queries: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), one column per query: each block's top k of every query, which hold the
    exact top k of all the blocks."""
    kept_scores, kept_rows = [], []
    for vectors, rows in blocks:
        scores = vectors @ queries.T
        if len(rows) > k:
            top = np.argpartition(-scores, k - 1, axis=0)[:k]
            kept_scores.append(np.take_along_axis(scores, top, axis=0))
            kept_rows.append(rows[top])
        else:
            kept_scores.append(scores)
            kept_rows.append(np.broadcast_to(rows[:, None], scores.shape))
    return np.concatenate(kept_scores), np.concatenate(kept_rows)


def exact_search(
    index: faiss.Index, queries: np.ndarray, k: int, allowed: AllowedRows | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) per query, best first, from the vectors a flat, IVF-Flat or
    HNSW-Flat index holds (the `allowed` rows only), without a second copy of all of them (a block
    with rows left out is copied without them). Meant for a few queries: FAISS 1.15
    scores fewer than a few hundred queries one at a time (with BLAS from 250 queries at d = 512),
    several times slower per query than one numpy product of all of them with each block. The
    blocks are shared among as many threads as FAISS uses; the result does not depend on how many."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, searchable_rows(index, allowed))
    blocks = list(vector_blocks(index))
    if allowed is not None:
        blocks = [(vectors[allowed.mask[rows]], rows[allowed.mask[rows]]) for vectors, rows in blocks]
        blocks = [(vectors, rows) for vectors, rows in blocks if len(rows)]
    workers = max(1, min(faiss.omp_get_max_threads(), len(blocks)))
    # Consecutive runs of blocks, so the candidates come in the same order for any thread count.
    shares = [blocks[len(blocks) * i // workers : len(blocks) * (i + 1) // workers] for i in range(workers)]
    # The products are thin (a few query columns): numpy's own BLAS threads gain little on them,
    # and spinning beside FAISS's OpenMP threads they made the whole search several times slower.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda share: _candidates(queries, share, k), shares))
    scores, rows = np.concatenate([s for s, _ in found]), np.concatenate([r for _, r in found])
    order = np.argsort(-scores, axis=0, kind="stable")[:k]
    return np.take_along_axis(scores, order, axis=0).T, np.take_along_axis(rows, order, axis=0).T


def search_queries(
    index: faiss.Index, queries: np.ndarray, k: int, recall: RecallTarget, allowed: AllowedRows | None = None
) -> SearchResult:
    """Top-k of every query in one FAISS call, among the `allowed` rows (all where None). An
    approximate index is searched with the smallest
    setting on a doubling ladder from its own (nprobe or efSearch as built) whose recall@recall_k
    on a sample of these queries, against their exact neighbours, reaches `recall.target`; the
    ladder of an IVF ends at nprobe = nlist, which is exact. The index's own settings are never
    changed: each search passes its own."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(index, faiss.IndexFlat):
        scores, rows = index.search(queries, k, params=_parameters(index, None, allowed))
        return SearchResult(scores, rows, None, None, None, 0)
    rungs, params = _setting_ladder(index, allowed)
    # Exact rows beyond the rows searched would be -1 and count as misses.
    recall_k = min(recall.recall_k, k, searchable_rows(index, allowed))
    sample = queries[sample_rows(len(queries), recall.sample_size)]
    _, exact_rows = exact_search(index, sample, recall_k, allowed)
    for setting in rungs:
        _, found = index.search(sample, k, params=params(setting))
        measured = recall_at_k(found[:, :recall_k], exact_rows)
        if measured >= recall.target:
            break
    scores, rows = index.search(queries, k, params=params(setting))
    return SearchResult(scores, rows, setting, measured, recall_k, len(sample))


def search_at(
    index: faiss.Index, queries: np.ndarray, k: int, setting: int | None, allowed: AllowedRows | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) of every query in one FAISS call, at `setting` (nprobe or efSearch; None
    for a flat index, or for an approximate one at its own setting), among the `allowed` rows (all
    where None); rows are -1 where fewer are allowed than k."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(queries, k, params=_parameters(index, setting, allowed))


def sample_recall(
    index: faiss.Index,
    queries: np.ndarray,
    rows: np.ndarray,
    sample_size: int,
    recall_k: int,
    allowed: AllowedRows | None = None,
) -> tuple[float, int]:
    """recall@recall_k of search results `rows` (one row per query, among the `allowed` rows) on
    `sample_size` evenly spaced queries, against their exact neighbours among the same rows; and how
    many queries that is."""
    sample = sample_rows(len(queries), sample_size)
    if not len(sample):
        return 1.0, 0
    recall_k = min(recall_k, rows.shape[1], searchable_rows(index, allowed))
    _, exact_rows = exact_search(index, queries[sample], recall_k, allowed)
    return recall_at_k(rows[sample, :recall_k], exact_rows), len(sample)


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
