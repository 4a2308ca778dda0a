"""The scenes phase: every image of every chunk as each VLM sees it, one file per chunk and VLM,
written as the chunk completes."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.grouped_writer import GroupedWriter
from pipelines.progress import pending
from pipelines.ray_runner import Runner
from pipelines.sonify.checks import read_phase
from pipelines.sonify.listing import Chunk, block_ranges
from schemas import SCENES
from schemas.config import (
    MapperVlmConfig,
    OpenAIVlmConfig,
    RunConfig,
    TransformersVlmConfig,
    VllmVlmConfig,
    VlmConfig,
)
from schemas.layout import SonifyLayout
from stages.base import Stage
from stages.embed.map_images_stage import MapImages
from stages.images.decode_stage import DecodeImages
from stages.io import storage
from stages.vlm.openai_stage import OpenAIVlm
from stages.vlm.parse_stage import ParseConcepts
from stages.vlm.provided_stage import ProvidedConcepts
from stages.vlm.transformers_stage import TransformersVlm
from stages.vlm.vllm_stage import VllmVlm

# Rows of the blocks that carry images through decoding and the VLM (rounded to the VLM's batch).
IMAGES_PER_BLOCK = 64


def vlm_stage(vlm: VlmConfig, config: RunConfig) -> Stage:
    """The answer stage of a VLM backend."""
    if isinstance(vlm, VllmVlmConfig):
        return VllmVlm(vlm, config.prompt)
    if isinstance(vlm, TransformersVlmConfig):
        return TransformersVlm(vlm, config.prompt)
    if isinstance(vlm, OpenAIVlmConfig):
        return OpenAIVlm(vlm, config.prompt)
    return ProvidedConcepts(vlm)


def scene_stages(vlm: VlmConfig, config: RunConfig, identities: dict | None) -> list[Stage]:
    """The stages after image decoding that make a source's scenes: a VLM's answer and its parsing,
    or a mapper's CLIP and mapper (`identities`: the pool's `clap` and models.clip's `clip`, that
    its checkpoint must have been trained with)."""
    if isinstance(vlm, MapperVlmConfig):
        return [MapImages(vlm, config.models.clip, identities["clap"], identities["clip"])]
    # Parsed in the VLM's own batches: a larger batch would hold answers back until it filled, across
    # chunks, so chunk files would be written late, in bursts, and a kill would lose answers already made.
    parse = ParseConcepts(
        vlm.name, config.prompt.max_answer_chars, config.prompt.max_concepts, batch_size=vlm.batch_size
    )
    return [vlm_stage(vlm, config), parse]


def run_scenes(
    config: RunConfig,
    listing: pa.Table,
    chunks: list[Chunk],
    vlm: VlmConfig,
    layout: SonifyLayout,
    identities: dict | None = None,
) -> None:
    """Scenes of one source (a VLM, or a mapper with the model `identities` its checkpoint must
    match) for every chunk without a scenes file yet, each file written as its chunk completes."""
    done = {storage.file_stem(u) for u in storage.list_files(layout.vlm_scenes_folder(vlm.name), ".parquet")}
    todo = pending(f"scenes {vlm.name}", chunks, lambda chunk: chunk.name in done)
    if not todo:
        return
    decode = DecodeImages(config.sonify.min_side, config.sonify.max_image_pixels, batch_size=vlm.batch_size)
    block_rows = vlm.batch_size * max(1, IMAGES_PER_BLOCK // vlm.batch_size)
    blocks = [listing.slice(start, stop - start) for c in todo for start, stop in block_ranges(c, block_rows)]
    first_ids = [listing.column("image_id")[c.start].as_py() for c in chunks]

    def write(index: int, rows: pa.Table) -> int:
        storage.write_parquet(layout.scenes(vlm.name, chunks[index].name), rows.sort_by([("image_id", "ascending")]))
        return rows.num_rows

    writer = GroupedWriter(
        f"scenes {vlm.name}",
        [c.index for c in todo],
        group_of=lambda batch: [bisect.bisect_right(first_ids, i) - 1 for i in batch.column("image_id").to_pylist()],
        expected_rows=lambda index, rows: chunks[index].rows,
        write=write,
        unit="images",
        group_unit="chunks",
    )
    # In order, every batch is a fixed slice of one block, so a resumed run batches as the first did.
    stages = [decode, *scene_stages(vlm, config, identities)]
    writer.consume(Runner(config.ray).run(blocks, stages, preserve_order=True))


def read_chunk_scenes(
    config: RunConfig, layout: SonifyLayout, chunk: Chunk, columns: list[str] | None = None
) -> pa.Table:
    tables = []
    for vlm in config.models.vlm:
        table = read_phase(layout.scenes(vlm.name, chunk.name), SCENES)
        tables.append(table.select(columns) if columns else table)
    return pa.concat_tables(tables)


@dataclass
class SceneCounts:
    """What the scenes of every chunk add up to, read one chunk at a time."""

    concepts: int = 0
    dropped_empty_concepts: int = 0
    image_errors: Counter = field(default_factory=Counter)
    too_small: int = 0
    by_vlm: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))


def count_scenes(config: RunConfig, layout: SonifyLayout, chunks: list[Chunk]) -> SceneCounts:
    """The counts of every chunk's scenes; reading each also checks that this version wrote it."""
    counts = SceneCounts()
    first_vlm = config.models.vlm[0].name
    columns = ["vlm", "dropped_empty_concepts", "dropped", "error_kind", "error_stage"]
    for chunk in chunks:
        scenes = read_chunk_scenes(config, layout, chunk)
        # Concept counts, not the concepts: no text reaches the driver.
        counted = scenes.select(columns).append_column("concepts", pc.list_value_length(scenes.column("concepts")))
        for row in counted.to_pylist():
            status = f"{row['error_stage']}_error" if row["error_stage"] else row["dropped"] or "ok"
            counts.by_vlm[row["vlm"]][status] += 1
            counts.dropped_empty_concepts += row["dropped_empty_concepts"] or 0
            if row["vlm"] == first_vlm:
                counts.too_small += row["dropped"] == "too_small"
                if row["error_stage"] == "images":
                    counts.image_errors[row["error_kind"]] += 1
            if status == "ok":
                counts.concepts += row["concepts"] or 0
    return counts
