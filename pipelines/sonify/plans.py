"""The planning phase: every chunk searched and planned by Ray workers, then its shards numbered
on the driver.

A chunk's retrieval and its planning run one after the other in one Ray pipeline, chunk by chunk,
so the first shards can be planned while later chunks are still searched. Planning workers read
one pool-sized table, mix_clips.parquet (`mixable_pool_clips`), which the run writes from the pool
before this phase.
Shards are numbered by a prefix sum of the chunks' shard counts, in chunk order, so a rerun numbers
them as the first run did whichever chunks it had to plan."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.pool import read_clips
from pipelines.ray_runner import Runner
from pipelines.sonify.listing import Chunk
from pipelines.sonify.matching import build_hub_bank, retrieval_stage
from schemas import CHUNK_TASKS, SHARD_TASKS, make_table
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout, shard_id
from stages.audio.loudness import mix_clips
from stages.base import check_chain
from stages.io import storage
from stages.pairing.plan_stage import PlanChunks
from stages.pairing.planning import CHUNK_COUNTS, MAX_REPORTED_REASONS

log = logging.getLogger(__name__)


def mixable_pool_clips(paths: PoolLayout, config: RunConfig, rate: int) -> tuple[pa.Table, int]:
    """The pool's MIX_CLIPS table at `rate` (the clips a mix at that rate may use), and how many
    indexed (non-silent) clips are not audible there."""
    table = read_clips(paths, ["clip_id", "part", "lufs", "loudness_at_rates", "silent", "error"])
    indexed = table.filter(pc.is_null(pc.field("error")) & pc.invert(pc.field("silent")))
    mixable = mix_clips(indexed, rate, config.pool.silence_lufs, config.pool.max_band_loss_lu)
    return mixable, indexed.num_rows - mixable.num_rows


def retrieve_and_plan(config: RunConfig, paths: PoolLayout, out: str, chunks: list[Chunk]) -> None:
    """Searches and plans every chunk not yet planned."""
    layout = SonifyLayout(out)
    todo = [c.name for c in chunks if not storage.exists(layout.chunk_plan(c.name))]
    log.info("retrieval and planning: %d of %d chunks to do", len(todo), len(chunks))
    if not todo:
        return
    searched = all(storage.exists(layout.search_stats(chunk)) for chunk in todo)
    if not searched:
        build_hub_bank(config, paths, out, chunks)
    # Retrieval actors load the text model and the whole index: a run left with planning only starts none.
    stages = [PlanChunks(out, config)] if searched else [retrieval_stage(config, paths, out), PlanChunks(out, config)]
    check_chain(CHUNK_TASKS, stages)
    done, report_at, started = 0, 0, time.monotonic()
    for batch in Runner(config.ray).run(make_table(CHUNK_TASKS, {"chunk": todo}), stages, blocks=len(todo)):
        done += batch.num_rows
        if done >= report_at:
            log.info(
                "retrieval and planning: %d/%d chunks, %.1f chunks/s",
                done,
                len(todo),
                done / max(time.monotonic() - started, 1e-9),
            )
            report_at = done + max(1, len(todo) // 20)


def number_shards(out: str, chunks: list[Chunk]) -> tuple[pa.Table, Counter, list[str]]:
    """SHARD_TASKS of every planned shard, numbered in chunk order; the counts of all chunks; the
    first rejection reasons."""
    layout = SonifyLayout(out)
    shards, plans, totals, reasons = [], [], Counter(), []
    for chunk in chunks:
        stats = json.loads(storage.read_bytes(layout.chunk_plan(chunk.name)))
        for position in range(stats["shards"]):
            shards.append(shard_id(len(shards)))
            plans.append(layout.chunk_shard_plan(chunk.name, position))
        totals.update({k: stats[k] for k in CHUNK_COUNTS})
        reasons.extend(stats["rejection_reasons"][: MAX_REPORTED_REASONS - len(reasons)])
    return make_table(SHARD_TASKS, {"shard": shards, "plan_url": plans}), totals, reasons
