"""The retrieval phase: each chunk's distinct concept texts embedded and searched on a worker,
its matches and search stats written beside the chunk (matches/). The driver holds no text.

With retrieval.hubness on, one actor first makes the hubness bank and the clips' biases
(hubness/), before any chunk is searched; every retrieval actor then reads the same ones."""

from __future__ import annotations

import json
import logging

from pipelines.ray_runner import Runner
from pipelines.sonify.listing import Chunk
from schemas import CHUNK_TASKS, make_table
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.base import check_chain
from stages.io import storage
from stages.search.bank_stage import BuildHubBank
from stages.search.search_stage import RetrieveChunks

log = logging.getLogger(__name__)


def retrieval_stage(config: RunConfig, paths: PoolLayout, out: str) -> RetrieveChunks:
    return RetrieveChunks(paths.root, out, [v.name for v in config.models.vlm], config.models.clap, config.retrieval)


def build_hub_bank(config: RunConfig, paths: PoolLayout, out: str, chunks: list[Chunk]) -> None:
    """The hubness bank and biases of the run, made (or completed for clips added to the pool) by one
    actor; nothing with retrieval.hubness: none."""
    if config.retrieval.hubness == "none":
        return
    stage = BuildHubBank(paths.root, out, [v.name for v in config.models.vlm], config.models.clap, config.retrieval)
    check_chain(CHUNK_TASKS, [stage])
    tasks = make_table(CHUNK_TASKS, {"chunk": [c.name for c in chunks]})
    for _ in Runner(config.ray).run(tasks, [stage], blocks=1):
        pass
    stats = json.loads(storage.read_bytes(SonifyLayout(out).hubness_stats()))
    log.info(
        "hubness bank: %d texts; %d of %d clips penalized; k-occurrence skewness %.2f",
        stats["bank_texts"],
        stats["penalized_clips"],
        stats["clips"],
        stats["k_occurrence_skewness"],
    )


def search_totals(out: str, chunks: list[Chunk], index_kind: str) -> dict:
    """What the search stats of every chunk add up to: texts searched (a text recurring in several
    chunks counts once per chunk) and, for an approximate index, the settings it was searched at
    (one, unless actors calibrated apart), the lowest recall that chose one, and the recall measured
    on the sampled texts of the measured chunks, over all of them (None if no chunk was measured)."""
    texts, hits, sampled, stats_of_searches = 0, 0.0, 0, []
    for chunk in chunks:
        stats = json.loads(storage.read_bytes(SonifyLayout(out).search_stats(chunk.name)))
        texts += stats["texts"]
        if "setting" in stats:
            stats_of_searches.append(stats)
            hits += (stats["recall"] or 0.0) * stats["recall_queries"]
            sampled += stats["recall_queries"]
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
