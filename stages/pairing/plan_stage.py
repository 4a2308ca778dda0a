"""The planning task: one chunk's scenes and matches in, its shard plans, rejected rows and stats out.

Each worker process reads the pool's MIX_CLIPS table once (one row per mixable clip, the only
pool-sized thing planning needs) and plans chunk after chunk with stages.pairing.planning. The stats file
is written last and marks the chunk planned.
"""

from __future__ import annotations

import json
from typing import ClassVar

import pyarrow as pa

from schemas import CHUNK_TASKS
from schemas.config import RunConfig
from schemas.layout import SonifyLayout
from stages.base import Resources, Stage
from stages.io import storage
from stages.pairing.planning import plan_chunk


class PlanChunks(Stage):
    name: ClassVar[str] = "plan_chunks"
    required_columns: ClassVar[tuple[str, ...]] = tuple(CHUNK_TASKS.names)

    def __init__(self, layout: SonifyLayout, config: RunConfig) -> None:
        self.layout = layout
        self.config = config
        self.mix_clips: pa.Table | None = None

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return CHUNK_TASKS

    def setup(self) -> None:
        self.mix_clips = storage.read_parquet(self.layout.mix_clips())

    def process_batch(self, batch: pa.Table) -> pa.Table:
        layout = self.layout
        for chunk in batch.column("chunk").to_pylist():
            if storage.exists(layout.chunk_plan(chunk)):
                continue
            scenes = pa.concat_tables(
                storage.read_parquet(layout.scenes(vlm.name, chunk)) for vlm in self.config.models.vlm
            )
            plan = plan_chunk(self.config, scenes, storage.read_parquet(layout.matches(chunk)), self.mix_clips)
            for position, shard in enumerate(plan.shards):
                storage.write_parquet(layout.chunk_shard_plan(chunk, position), shard)
            storage.write_parquet(layout.rejected(chunk), plan.rejected)
            storage.write_text(layout.chunk_plan(chunk), json.dumps(plan.stats) + "\n")
        return batch
