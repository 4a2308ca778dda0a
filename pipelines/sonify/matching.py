"""The retrieval phase: each chunk's distinct concept texts embedded and searched on a worker,
its matches and search stats written beside the chunk (matches/). The driver holds no text, only
one CHUNK_SEARCHES row per chunk.

With retrieval.hubness on, one actor first makes the hubness bank and the clips' biases
(hubness/), before any chunk is searched; every retrieval actor then reads the same ones."""

from __future__ import annotations

import json
import logging

import pyarrow as pa

from pipelines.ray_runner import Runner
from schemas import CHUNK_SEARCHES, CHUNK_TASKS, make_table
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.io import storage
from stages.search.bank_stage import BuildHubBank
from stages.search.missing_stage import ListMissingSounds
from stages.search.search_stage import RetrieveChunks

log = logging.getLogger(__name__)


def retrieval_stage(config: RunConfig, pool: PoolLayout, layout: SonifyLayout) -> RetrieveChunks:
    return RetrieveChunks(pool, layout, [v.name for v in config.models.vlm], config.models.clap, config.retrieval)


def build_hub_bank(config: RunConfig, pool: PoolLayout, layout: SonifyLayout, chunks: list[str]) -> None:
    """The hubness bank and biases of the run, made (or completed for clips added to the pool) by one
    actor; nothing with retrieval.hubness: none."""
    if config.retrieval.hubness == "none":
        return
    stage = BuildHubBank(pool, layout, [v.name for v in config.models.vlm], config.models.clap, config.retrieval)
    for _ in Runner(config.ray).run(make_table(CHUNK_TASKS, {"chunk": chunks}), [stage], blocks=1):
        pass
    stats = json.loads(storage.read_bytes(layout.hubness_stats()))
    log.info(
        "hubness bank: %d texts; %d of %d clips penalized; k-occurrence skewness %.2f",
        stats["bank_texts"],
        stats["penalized_clips"],
        stats["clips"],
        stats["k_occurrence_skewness"],
    )


def list_missing_sounds(config: RunConfig, pool: PoolLayout, layout: SonifyLayout, chunks: list[str]) -> dict:
    """The run's missing sounds, listed (or regrouped with new settings) by one actor once every
    chunk is planned; their counts."""
    stage = ListMissingSounds(
        pool,
        layout,
        [v.name for v in config.models.vlm],
        config.models.clap,
        config.retrieval,
        config.sonify.missing_sounds,
    )
    tasks = make_table(CHUNK_TASKS, {"chunk": chunks})
    if chunks:
        for _ in Runner(config.ray).run(tasks, [stage], blocks=1):
            pass
    else:
        # No image, so no text: the empty list is written here, without a model or a Ray actor.
        stage.process_batch(tasks)
    stats = json.loads(storage.read_bytes(layout.missing_sounds_stats()))
    del stats["settings"]
    log.info(
        "missing sounds: %d texts asked for %d times, in %d groups (%s)",
        stats["texts"],
        stats["requests"],
        stats["groups"],
        layout.missing_sounds(),
    )
    return stats


def search_totals(plans: pa.Table, index_kind: str) -> dict:
    """What the searches of every chunk (CHUNK_SEARCHES columns, as CHUNK_PLANS carries them) add up
    to: texts searched (a text recurring in several chunks counts once per chunk) and, for an
    approximate index, the settings it was searched at (one, unless actors calibrated apart), the
    lowest recall that chose one, and the recall measured on the sampled texts of the measured
    chunks, over all of them (None if no chunk was measured); with the hubness correction on, the
    widest raw search a chunk's certified re-rank needed."""
    searches = plans.select(CHUNK_SEARCHES.names).to_pylist()
    texts = sum(search["texts"] for search in searches)
    mapped = sum(search["mapped_queries"] for search in searches)
    # Exact search records no setting.
    stats_of_searches = [search for search in searches if search["setting"] is not None]
    hits = sum((search["recall"] or 0.0) * search["recall_queries"] for search in stats_of_searches)
    sampled = sum(search["recall_queries"] for search in stats_of_searches)
    totals = {
        "texts_searched": texts,
        "mapped_searched": mapped,
        "index_kind": index_kind,
        "exact": index_kind == "flat",
    }
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
    widest = [search["hubness_widest_search"] for search in searches if search["hubness_widest_search"] is not None]
    if widest:
        totals["hubness_widest_search"] = max(widest)
    return totals
