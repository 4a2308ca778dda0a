"""The listing phase: every input image, sorted by id and cut into chunks, made once per sonify.out."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from pipelines.sonify.checks import read_phase
from schemas import IMAGE_REFS, make_table
from schemas.config import RunConfig
from schemas.layout import SonifyLayout, chunk_id
from stages.images.listing import assign_image_ids, list_images
from stages.io import storage


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of the listing sorted by image id."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return chunk_id(self.index)

    @property
    def rows(self) -> int:
        return self.stop - self.start


def chunk_listing(rows: int, per_chunk: int) -> list[Chunk]:
    return [Chunk(i, start, min(start + per_chunk, rows)) for i, start in enumerate(range(0, rows, per_chunk))]


def block_ranges(chunk: Chunk, block_rows: int) -> list[tuple[int, int]]:
    """Fixed row ranges of a chunk: the blocks a VLM receives, whichever chunks a run still has to do."""
    return [(start, min(start + block_rows, chunk.stop)) for start in range(chunk.start, chunk.stop, block_rows)]


def image_listing(config: RunConfig, layout: SonifyLayout) -> tuple[pa.Table, dict]:
    """The sorted listing and its counts, made on the first run and read back on every rerun, so
    that chunks hold the same images however the inputs are listed later."""
    url, stats_url = layout.images(), layout.images_counts()
    if storage.exists(url):
        return read_phase(url, IMAGE_REFS), json.loads(storage.read_bytes(stats_url))
    refs = list_images(config.sonify.images)
    ids = assign_image_ids(refs)
    table = make_table(
        IMAGE_REFS,
        {
            "image_id": ids,
            "uri": [r.uri for r in refs],
            "member": [r.member for r in refs],
            "error": [r.error for r in refs],
            "error_kind": [r.error_kind for r in refs],
        },
    ).sort_by([("image_id", "ascending")])
    stats = {"listed": len(refs), "renamed_duplicate_ids": sum(i != r.own_id for i, r in zip(ids, refs))}
    storage.write_text(stats_url, json.dumps(stats) + "\n")
    storage.write_parquet(url, table)
    return table, stats
