"""Hub clips: a fixed per-clip bias measured against a bank of the run's own concept texts, and the
search that ranks neighbours by cosine minus that bias (docs/hubness.md states the rule and why).

    b(a)     = mean cosine of clip a to its k nearest bank texts            (NNN's bias)
    centre   = median of b over the pool;  spread = 1.4826 * MAD of b
    p(a)     = alpha * max(0, b(a) - centre - z * spread)                   (only outliers pay)
    corrected(q, a) = cosine(q, a) - p(a)

A clip of no exceptional bias keeps its raw cosine, so corrected scores stay on the cosine scale and
the paper's threshold keeps its meaning; only clips whose bias stands out from the pool's (hubs)
are pushed down, by how far they stand out. The penalty is fixed per clip, computed once per run,
so every chunk is searched alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np

from stages.search import faiss_index

# Scores held in memory per block of the bias pass (pool rows x bank texts, float32).
BIAS_BLOCK_SCORES = 1 << 24
# MAD of a normal distribution times this is its standard deviation.
MAD_TO_SIGMA = 1.4826


def bank_rows(n_texts: int, size: int) -> np.ndarray:
    """Rows of the bank among n sorted distinct texts: `size` of them, evenly spaced, so the bank
    depends only on the texts."""
    return faiss_index.sample_rows(n_texts, size)


@dataclass
class BankNeighbours:
    """Per bank text, its k nearest clips seen so far (scores and pool rows, best first), merged
    block by block; from them the k-occurrence of every clip."""

    scores: np.ndarray  # (bank, k) float32
    rows: np.ndarray  # (bank, k) int64, -1 where fewer than k clips were seen

    @classmethod
    def empty(cls, bank_size: int, k: int) -> BankNeighbours:
        return cls(np.full((bank_size, k), -np.inf, np.float32), np.full((bank_size, k), -1, np.int64))

    @classmethod
    def restore(cls, rows: list[list[int]], scores: list[list[float]], k: int) -> BankNeighbours:
        """From stored lists, best first; rows of -1 (clips no longer in the pool) are left out."""
        neighbours = cls.empty(len(rows), k)
        for i, (found, found_scores) in enumerate(zip(rows, scores)):
            kept = [(s, r) for s, r in zip(found_scores, found) if r >= 0][:k]
            neighbours.scores[i, : len(kept)] = [s for s, _ in kept]
            neighbours.rows[i, : len(kept)] = [r for _, r in kept]
        return neighbours

    def merge(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """Adds a block's scores (bank x block clips) with the pool rows of its clips."""
        k = self.scores.shape[1]
        all_scores = np.concatenate([self.scores, scores], axis=1)
        if all_scores.shape[1] > k:
            top = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(all_scores.shape[1]), all_scores.shape)
        top_scores = np.take_along_axis(all_scores, top, axis=1)
        # Positions below k are kept neighbours, the others columns of the block.
        kept = np.take_along_axis(self.rows, np.minimum(top, k - 1), axis=1)
        top_rows = np.where(top < k, kept, rows[np.clip(top - k, 0, len(rows) - 1)]) if len(rows) else kept
        # Best first, ties to the lower pool row.
        order = np.lexsort((top_rows, -top_scores), axis=1)
        self.scores = np.take_along_axis(top_scores, order, axis=1)
        self.rows = np.take_along_axis(top_rows, order, axis=1)

    def k_occurrence(self, n_clips: int) -> np.ndarray:
        """How many bank texts hold each of n clips among their k nearest."""
        found = self.rows[self.rows >= 0]
        return np.bincount(found, minlength=n_clips).astype(np.int64)


def clip_biases(
    blocks: Iterable[tuple[np.ndarray, np.ndarray]], bank: np.ndarray, k: int, neighbours: BankNeighbours
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over clips against the bank: (pool rows, biases) of every clip in `blocks`
    ((vectors, pool rows) pairs, each vector L2-normalized), the bias being the mean cosine to the k
    nearest bank texts; `neighbours` gathers each bank text's nearest clips on the way. Memory is
    bounded by BIAS_BLOCK_SCORES, whatever the sizes."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    k = min(k, len(bank))
    rows_per_product = max(1, BIAS_BLOCK_SCORES // max(len(bank), 1))
    all_rows, biases = [np.zeros(0, np.int64)], [np.zeros(0)]
    for vectors, rows in blocks:
        for start in range(0, len(rows), rows_per_product):
            part = np.ascontiguousarray(vectors[start : start + rows_per_product], dtype=np.float32)
            part_rows = np.asarray(rows[start : start + rows_per_product], dtype=np.int64)
            scores = part @ bank.T
            top = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k:]
            biases.append(top.astype(np.float64).mean(axis=1))
            all_rows.append(part_rows)
            neighbours.merge(scores.T, part_rows)
    return np.concatenate(all_rows), np.concatenate(biases)


def pool_biases(
    index: faiss.Index, bank: np.ndarray, k: int, neighbours: BankNeighbours, wanted: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, biases) of the clips an index holds, read from its own memory block by block;
    with `wanted` (a boolean per pool row), of those clips only: a pool extended since the last
    pass needs the new clips' biases alone."""
    blocks = faiss_index.vector_blocks(index)
    if wanted is not None:
        blocks = ((vectors[wanted[rows]], rows[wanted[rows]]) for vectors, rows in blocks)
    return clip_biases(blocks, bank, k, neighbours)


def skewness(values: np.ndarray) -> float:
    """Sample skewness E[(x - mean)^3] / std^3; 0 for a constant."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    return float(np.mean((values - values.mean()) ** 3) / std**3) if std > 0 else 0.0


@dataclass(frozen=True)
class Correction:
    """How biases become penalties: clips whose bias exceeds centre + z * spread pay alpha times the excess."""

    alpha: float
    outlier_z: float
    centre: float
    spread: float

    @classmethod
    def of_pool(cls, biases: np.ndarray, alpha: float, outlier_z: float) -> Correction:
        """Centre and spread from the pool's own biases: median and MAD, which a few hubs do not move."""
        biases = np.asarray(biases, dtype=np.float64)
        if not biases.size:
            return cls(alpha, outlier_z, 0.0, 0.0)
        centre = float(np.median(biases))
        return cls(alpha, outlier_z, centre, float(MAD_TO_SIGMA * np.median(np.abs(biases - centre))))

    def penalties(self, biases: np.ndarray) -> np.ndarray:
        excess = np.asarray(biases, dtype=np.float64) - (self.centre + self.outlier_z * self.spread)
        return (self.alpha * np.maximum(excess, 0.0)).astype(np.float32)


# (scores, rows) of the top-k of queries: the index's own search, at the run's setting.
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def index_searcher(index: faiss.Index, setting: int | None, allowed: faiss_index.AllowedRows | None = None) -> Searcher:
    return lambda queries, k: faiss_index.search_at(index, queries, k, setting, allowed)


def corrected_search(
    search: Searcher, n_clips: int, queries: np.ndarray, k: int, penalties: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Top-k of every query by corrected score (cosine - penalty), best first: (raw cosines,
    corrected scores, rows, widest raw search). Each query's raw top-K' is re-ranked, and K' doubles
    (for that query alone) until its k-th corrected score is at least the raw K'-th cosine minus the
    smallest penalty: no clip beyond the raw top-K' can score above that, so the result is the
    exact top-k of the corrected scores (over what the index's search returns). Rows are -1 and
    scores NaN where the pool holds fewer than k clips."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, k)
    least = float(penalties.min()) if penalties.size else 0.0
    raw_out = np.full((len(queries), k), np.nan, np.float32)
    corrected_out = np.full((len(queries), k), np.nan, np.float32)
    rows_out = np.full((len(queries), k), -1, np.int64)
    pending, width, widest = np.arange(len(queries)), min(2 * k, n_clips), 0
    while pending.size:
        widest = max(widest, width)
        raw, rows = search(queries[pending], width)
        found = rows >= 0
        corrected = np.where(found, raw - penalties[np.where(found, rows, 0)], -np.inf)
        # Best corrected first; ties keep the raw order, so a pool without penalties ranks as the raw search.
        order = np.argsort(-corrected, axis=1, kind="stable")[:, :k]
        kth = np.take_along_axis(corrected, order[:, -1:], axis=1)[:, 0]
        certified = (width >= n_clips) | (kth >= raw[:, -1] - least) | ~found[:, -1]
        done = pending[certified]
        picked = np.take_along_axis(rows, order, axis=1)[certified]
        valid = picked >= 0
        rows_out[done, : order.shape[1]] = np.where(valid, picked, -1)
        raw_out[done, : order.shape[1]] = np.where(valid, np.take_along_axis(raw, order, axis=1)[certified], np.nan)
        corrected_out[done, : order.shape[1]] = np.where(
            valid, np.take_along_axis(corrected, order, axis=1)[certified], np.nan
        )
        pending, width = pending[~certified], min(2 * width, n_clips)
    return raw_out, corrected_out, rows_out, widest
