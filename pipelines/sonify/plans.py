"""The planning phase: every chunk searched and planned by Ray workers, then its shards numbered
on the driver.

A chunk's retrieval and its planning run one after the other in one Ray pipeline, chunk by chunk,
so the first shards can be planned while later chunks are still searched. Planning workers read
one pool-sized table, mix_clips.parquet, which the run writes from the pool
(`PoolStore.mixable_clips`) before this phase.
The driver gets one CHUNK_PLANS row per chunk (what its files hold, its search carried through)
and numbers shards by a prefix sum of the chunks' shard counts, in chunk order, so a rerun numbers
them as the first run did whichever chunks it had to plan."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipelines.progress import Progress, pending
from pipelines.ray_runner import Runner
from pipelines.sonify.listing import Chunk
from pipelines.sonify.matching import build_hub_bank, retrieval_stage
from schemas import CHUNK_PLANS, CHUNK_TASKS, SHARD_TASKS, make_table
from schemas.config import RunConfig
from schemas.layout import PoolLayout, SonifyLayout, shard_id
from stages.io import storage
from stages.pairing.plan_stage import PlanChunks, planned_chunk, plans_table
from stages.pairing.planning import CHUNK_COUNTS, MAX_REPORTED_REASONS
from stages.search.search_stage import search_table, searched_chunk


def retrieve_and_plan(config: RunConfig, pool: PoolLayout, layout: SonifyLayout, chunks: list[Chunk]) -> pa.Table:
    """CHUNK_PLANS of every chunk, in chunk order: the rows of chunks planned before, from their plan
    stats files, and those of the others, searched (where not yet) and planned now."""
    names = [chunk.name for chunk in chunks]
    todo = pending("retrieval and planning", names, lambda chunk: storage.exists(layout.chunk_plan(chunk)))
    waiting = set(todo)
    tables = [plans_table([planned_chunk(layout, searched_chunk(layout, c)) for c in names if c not in waiting])]
    if todo:
        # Chunks planned now change what the missing-sounds list is made of: it is made again.
        storage.remove(layout.missing_sounds_stats())
        plan = PlanChunks(layout, config)
        if pending("retrieval", todo, lambda chunk: storage.exists(layout.search_stats(chunk))):
            build_hub_bank(config, pool, layout, names)
            source, stages = make_table(CHUNK_TASKS, {"chunk": todo}), [retrieval_stage(config, pool, layout), plan]
        else:
            # Retrieval actors load the text model and the whole index: a run left with planning only starts none.
            source, stages = search_table([searched_chunk(layout, chunk) for chunk in todo]), [plan]
        progress = Progress("retrieval and planning", len(todo), "chunks")
        for batch in Runner(config.ray).run(source, stages, blocks=len(todo)):
            tables.append(make_table(CHUNK_PLANS, batch))
            progress.advance(batch.num_rows)
    return pa.concat_tables(tables).sort_by("chunk")


def number_shards(plans: pa.Table) -> tuple[pa.Table, Counter, list[str]]:
    """SHARD_TASKS of every planned shard of `plans` (CHUNK_PLANS in chunk order), numbered in chunk
    order within each split; the counts of all chunks; the first rejection reasons."""
    shards, plan_urls, totals, reasons = [], [], Counter(), []
    numbered: Counter = Counter()
    for row in plans.select(["shard_plan_urls", "shard_splits", *CHUNK_COUNTS, "rejection_reasons"]).to_pylist():
        for url, split in zip(row["shard_plan_urls"], row["shard_splits"]):
            shards.append(shard_id(numbered[split], split))
            numbered[split] += 1
            plan_urls.append(url)
        totals.update({k: row[k] for k in CHUNK_COUNTS})
        reasons.extend(row["rejection_reasons"][: MAX_REPORTED_REASONS - len(reasons)])
    return make_table(SHARD_TASKS, {"shard": shards, "plan_url": plan_urls}), totals, reasons
