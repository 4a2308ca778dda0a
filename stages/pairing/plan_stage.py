"""The planning task: one chunk's scenes and matches in, its shard plans, rejected rows, missing
texts and stats out.

Each worker process reads the pool's MIX_CLIPS table once (one row per mixable clip, the only
pool-sized thing planning needs) and plans chunk after chunk with stages.pairing.planning. The
stats file is written last and marks the chunk planned. A chunk's output row (CHUNK_PLANS) says
what its files hold, whether this run or an earlier one wrote them, and carries the chunk's search
row through.
"""

from __future__ import annotations

import json
from typing import ClassVar

import pyarrow as pa

from schemas import CHUNK_PLANS, CHUNK_SEARCHES, make_table
from schemas.config import RunConfig
from schemas.layout import SonifyLayout
from stages.base import Resources, Stage
from stages.io import storage
from stages.pairing.planning import plan_chunk

# The CHUNK_PLANS columns a chunk's plan stats file holds.
PLAN_STATS = CHUNK_PLANS.names[CHUNK_PLANS.names.index("shards") :]


def plan_row(layout: SonifyLayout, search: dict, stats: dict) -> dict:
    """The CHUNK_PLANS row of a chunk (searched as its CHUNK_SEARCHES row says) planned with these stats."""
    chunk = search["chunk"]
    return {
        **search,
        "shard_plan_urls": [layout.chunk_shard_plan(chunk, position) for position in range(stats["shards"])],
        "rejected_url": layout.rejected(chunk),
        **{name: stats[name] for name in PLAN_STATS},
    }


def planned_chunk(layout: SonifyLayout, search: dict) -> dict:
    """The CHUNK_PLANS row of a chunk planned before, from its plan stats file."""
    return plan_row(layout, search, json.loads(storage.read_bytes(layout.chunk_plan(search["chunk"]))))


def plans_table(rows: list[dict]) -> pa.Table:
    return make_table(CHUNK_PLANS, {name: [row[name] for row in rows] for name in CHUNK_PLANS.names})


class PlanChunks(Stage):
    name: ClassVar[str] = "plan_chunks"
    # A chunk is planned from the matches its search row names.
    required_columns: ClassVar[tuple[str, ...]] = tuple(CHUNK_SEARCHES.names)

    def __init__(self, layout: SonifyLayout, config: RunConfig) -> None:
        self.layout = layout
        self.config = config
        self.mix_clips: pa.Table | None = None
        self.image_credits: pa.Table | None = None

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return CHUNK_PLANS

    def setup(self) -> None:
        self.mix_clips = storage.read_parquet(self.layout.mix_clips())
        self.image_credits = storage.read_parquet(self.layout.image_credits())

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = []
        for search in batch.select(CHUNK_SEARCHES.names).to_pylist():
            chunk = search["chunk"]
            if storage.exists(self.layout.chunk_plan(chunk)):
                rows.append(planned_chunk(self.layout, search))
                continue
            scenes = pa.concat_tables(
                storage.read_parquet(self.layout.scenes(vlm.name, chunk)) for vlm in self.config.models.vlm
            )
            matches = storage.read_parquet(search["matches_url"])
            plan = plan_chunk(self.config, scenes, matches, self.mix_clips, self.image_credits)
            for position, shard in enumerate(plan.shards):
                storage.write_parquet(self.layout.chunk_shard_plan(chunk, position), shard)
            storage.write_parquet(self.layout.rejected(chunk), plan.rejected)
            storage.write_parquet(self.layout.missing_texts(chunk), plan.missing)
            storage.write_text(self.layout.chunk_plan(chunk), json.dumps(plan.stats) + "\n")
            rows.append(plan_row(self.layout, search, plan.stats))
        return plans_table(rows)
