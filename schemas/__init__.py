"""Arrow schemas of every table that crosses a stage boundary.

Each schema carries its name and version in its metadata, so a file on disk says which contract it
was written under. Stages build tables through `make_table`, which refuses missing or extra columns.
"""

from schemas.base import SchemaMismatch, make_table, schema_version, versioned
from schemas.pool import (
    GENERATED_SOUNDS,
    GENERATION,
    GENERATION_REQUESTS,
    POOL_AUDIO,
    POOL_CLIPS,
    POOL_INDEX_IDS,
    POOL_PARTS,
    STANDARDIZED_CLIPS,
    embedded_clips_schema,
    embeddings_schema,
)
from schemas.report import GALLERY_ITEMS, REPORT_PROBLEMS
from schemas.sonify import (
    ANSWERS,
    CHUNK_PLANS,
    CHUNK_SEARCHES,
    CHUNK_TASKS,
    CLIP_BIASES,
    CLIP_LOCATION,
    HUB_BANK,
    IMAGE_REFS,
    IMAGES,
    MANIFEST,
    MANIFEST_POOL_READS,
    MATCHES,
    MIX_CLIPS,
    SCENES,
    SHARD_PLANS,
    SHARD_RESULTS,
    SHARD_TASKS,
)

__all__ = [
    "ANSWERS",
    "CHUNK_PLANS",
    "CHUNK_SEARCHES",
    "CHUNK_TASKS",
    "CLIP_BIASES",
    "CLIP_LOCATION",
    "GALLERY_ITEMS",
    "GENERATED_SOUNDS",
    "GENERATION",
    "GENERATION_REQUESTS",
    "HUB_BANK",
    "IMAGES",
    "IMAGE_REFS",
    "MANIFEST",
    "MANIFEST_POOL_READS",
    "MATCHES",
    "MIX_CLIPS",
    "SCENES",
    "SHARD_PLANS",
    "SHARD_RESULTS",
    "SHARD_TASKS",
    "POOL_AUDIO",
    "POOL_CLIPS",
    "POOL_INDEX_IDS",
    "POOL_PARTS",
    "REPORT_PROBLEMS",
    "STANDARDIZED_CLIPS",
    "SchemaMismatch",
    "embedded_clips_schema",
    "embeddings_schema",
    "make_table",
    "schema_version",
    "versioned",
]
