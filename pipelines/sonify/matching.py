"""The retrieval phase: each chunk's distinct concept texts embedded and searched on a worker,
its matches and search stats written beside the chunk (matches/). The driver holds no text, only
one CHUNK_SEARCHES row per chunk."""

from __future__ import annotations

import logging

import pyarrow as pa

from schemas import CHUNK_SEARCHES
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.search.search_stage import RetrieveChunks

log = logging.getLogger(__name__)


def retrieval_stage(config: RunConfig, pool: PoolLayout, layout: SonifyLayout) -> RetrieveChunks:
    return RetrieveChunks(pool, layout, [v.name for v in config.models.vlm], config.models.clap, config.retrieval)


def search_totals(plans: pa.Table, index_kind: str) -> dict:
    """What the searches of every chunk (CHUNK_SEARCHES columns, as CHUNK_PLANS carries them) add up
    to: texts searched (a text recurring in several chunks counts once per chunk) and, for an
    approximate index, the settings it was searched at (one, unless actors calibrated apart), the
    lowest recall that chose one, and the recall measured on the sampled texts of the measured
    chunks, over all of them (None if no chunk was measured)."""
    searches = plans.select(CHUNK_SEARCHES.names).to_pylist()
    texts = sum(search["texts"] for search in searches)
    # Exact search records no setting.
    stats_of_searches = [search for search in searches if search["setting"] is not None]
    hits = sum((search["recall"] or 0.0) * search["recall_queries"] for search in stats_of_searches)
    sampled = sum(search["recall_queries"] for search in stats_of_searches)
    totals = {"texts_searched": texts, "index_kind": index_kind, "exact": index_kind == "flat"}
    if stats_of_searches:
        settings = sorted({s["setting"] for s in stats_of_searches})
        if len(settings) > 1:
            log.warning(
                "retrieval actors chose different search settings %s: their calibration texts embedded differently",
                settings,
            )
        totals |= {
            "settings": settings,
            "recall_k": stats_of_searches[0]["recall_k"],
            "recall": hits / sampled if sampled else None,
            "recall_queries": sampled,
            "calibration_recall": min(s["calibration_recall"] for s in stats_of_searches),
            "calibration_queries": stats_of_searches[0]["calibration_queries"],
        }
    return totals
