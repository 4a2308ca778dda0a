"""The retrieval phase: each chunk's distinct concept texts embedded and searched on a worker,
its matches and search stats written beside the chunk (matches/). The driver holds no text."""

from __future__ import annotations

import json

from pipelines.sonify.listing import Chunk
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages import storage
from stages.retrieve import RetrieveChunks


def retrieval_stage(config: RunConfig, paths: PoolLayout, out: str) -> RetrieveChunks:
    return RetrieveChunks(paths.root, out, [v.name for v in config.models.vlm], config.models.clap, config.retrieval)


def search_totals(out: str, chunks: list[Chunk]) -> dict:
    """What the search stats of every chunk add up to: texts searched (a text recurring in several
    chunks counts once per chunk) and, for an approximate index, the setting it was searched at, the
    recall that chose it and the recall measured on every chunk's sample, over all of them."""
    texts, hits, sampled, approximate = 0, 0.0, 0, None
    for chunk in chunks:
        stats = json.loads(storage.read_bytes(SonifyLayout(out).search_stats(chunk.name)))
        texts += stats["texts"]
        if "setting" in stats:
            approximate = stats
            hits += (stats["recall"] or 0.0) * stats["recall_queries"]
            sampled += stats["recall_queries"]
    totals = {"texts_searched": texts, "exact": approximate is None}
    if approximate is not None:
        totals |= {
            "setting": approximate["setting"],
            "recall_k": approximate["recall_k"],
            "recall": hits / sampled if sampled else None,
            "recall_queries": sampled,
            "calibration_recall": approximate["calibration_recall"],
            "calibration_queries": approximate["calibration_queries"],
        }
    return totals
