"""Tables of the audio pool: clips, their standardized audio, their CLAP embeddings, the index ids."""

import pyarrow as pa

from schemas.base import versioned

LOUDNESS_AT_RATE = pa.struct(
    [
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("lufs", pa.float64()),
        pa.field("peak_dbfs", pa.float64()),
        # Where the clip's FLAC at this rate sits in its part's pack (pool.dir/audio/<rate>/<part>.tar):
        # the byte offset of its data and its size, so a mix reads exactly these bytes.
        pa.field("audio_offset", pa.int64()),
        pa.field("audio_bytes", pa.int64()),
    ]
)

# How a generated source was made (`run_pipeline.py generate`): the text-to-audio model's name, the
# prompt, the seed derived from it, the denoising steps and the guidance scale.
GENERATION = pa.struct(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance", pa.float64(), nullable=False),
    ]
)

_CLIP_FIELDS = [
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    # size:mtime or the store's ETag; compared on later runs to find changed sources.
    pa.field("source_fingerprint", pa.string()),
    pa.field("source_sha256", pa.string()),
    pa.field("source_format", pa.string()),
    pa.field("source_sample_rate", pa.int32()),
    pa.field("source_channels", pa.int32()),
    pa.field("source_duration_s", pa.float64()),
    pa.field("chunk_index", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64()),
    # Seconds of real audio in the clip; the rest up to clip_seconds is zero padding.
    pa.field("duration_s", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    # Integrated loudness (ITU-R BS.1770) of the stored clip at the pool rate; null for digital silence.
    pa.field("lufs", pa.float64()),
    pa.field("peak_dbfs", pa.float64()),
    # The same measurement on the clip as a mix at each configured mix rate decodes it (resampled
    # from the stored clip, then 16-bit), so that a mix sets each source's loudness exactly without
    # measuring again; and where that audio is stored.
    pa.field("loudness_at_rates", pa.list_(LOUDNESS_AT_RATE)),
    pa.field("silent", pa.bool_()),
    pa.field("part", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    # What kind of error `error` is (empty, undecodable, unreadable, ...); null when `error` is.
    pa.field("error_kind", pa.string()),
    # A variant clip (pool.variants): the clip it was made from, the variant's name and its chain as
    # JSON (with the content digest of any TorchScript model); null for a clip cut from a source.
    # A variant keeps its parent's source_id and source columns: it is that recording, transformed.
    pa.field("parent_clip_id", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("variant_chain", pa.string()),
    # Who may use the clip and whom to credit, from pool.metadata or the columns pool.parquet names:
    # the licence as an SPDX-style id (stages.licences.spdx), the value as given, the author or credit,
    # where the recording is published and its title; null where no metadata names the source. A
    # variant clip carries its parent's (it shares the source). Set when a part is written and
    # rewritten in place when the metadata changes; audio and embeddings stay.
    pa.field("license", pa.string()),
    pa.field("license_raw", pa.string()),
    pa.field("attribution", pa.string()),
    pa.field("source_url", pa.string()),
    pa.field("title", pa.string()),
    # A clip of a generated source (source kind `generated`, its audio made from a prompt by a
    # text-to-audio model): how it was made; null for a clip of a recording.
    pa.field("generation", GENERATION),
]

# What the standardize stage hands to the embed stage: one row per clip (the audio stays in its part
# file), plus how many rows its part has, so the writer knows when a part is complete.
STANDARDIZED_CLIPS = versioned(
    "standardized_clips", 5, [*_CLIP_FIELDS, pa.field("part_rows", pa.int32(), nullable=False)]
)

# pool.dir/clips/<part>.parquet: the pool table. Written last for a part, so it is the part's
# completion marker. 3: loudness_at_rates locates each clip in the part's pack at that rate. 4: variant
# clips and their parents. 5: licence and attribution of each clip's source; generation, the
# provenance of generated clips.
POOL_CLIPS = versioned("pool_clips", 5, _CLIP_FIELDS)

# pool.dir/audio/<part>.parquet: the standardized clip audio, FLAC-encoded, one row per clip.
POOL_AUDIO = versioned(
    "pool_audio",
    1,
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("flac", pa.binary(), nullable=False),
    ],
)


def embeddings_schema(dim: int) -> pa.Schema:
    """pool.dir/embeddings/<part>.parquet: L2-normalized CLAP audio embeddings of non-silent clips."""
    return versioned(
        "pool_embeddings",
        1,
        [
            pa.field("clip_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ],
    )


def embedded_clips_schema(dim: int) -> pa.Schema:
    """What the embed stage hands to the writer: the standardized clip rows plus their embedding,
    null for silent and error rows."""
    return versioned(
        "embedded_clips",
        5,
        [*STANDARDIZED_CLIPS, pa.field("embedding", pa.list_(pa.float32(), dim))],
    )


# pool.dir/index/ids.parquet: row i of the FAISS index is the clip with this clip_id.
POOL_INDEX_IDS = versioned(
    "pool_index_ids",
    1,
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
    ],
)

# Where a source that is not a file of its own sits in its container (stages.io.sources.Member): a
# Parquet row (column, row group, row in group) or a tar member (byte offset and size).
SOURCE_MEMBER = pa.struct(
    [
        pa.field("container", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("column", pa.string()),
        pa.field("row_group", pa.int32()),
        pa.field("row_in_group", pa.int32()),
        pa.field("data_offset", pa.int64()),
        pa.field("data_size", pa.int64()),
    ]
)

# The pool run's work plan: one row per part, a group of sources processed and written together.
# `members` holds, per source, its place in a container, or null for a file of its own; `errors`
# and `error_kinds` what listing found wrong with a source, or null; `generations` how a generated
# source was made, or null for a recording.
POOL_PARTS = versioned(
    "pool_parts",
    4,
    [
        pa.field("part", pa.string(), nullable=False),
        pa.field("uris", pa.list_(pa.string()), nullable=False),
        pa.field("fingerprints", pa.list_(pa.string())),
        pa.field("errors", pa.list_(pa.string())),
        pa.field("error_kinds", pa.list_(pa.string())),
        pa.field("members", pa.list_(SOURCE_MEMBER)),
        pa.field("generations", pa.list_(GENERATION)),
    ],
)

# pool.dir/generated/records/<batch>.parquet: the sounds `run_pipeline.py generate` made, one row
# per FLAC file in pool.dir/generated/audio/ (named by `file`), with how it was made. Written after
# the batch's files, so a file is a pool source only once its row is written; the pool run lists
# generated sources from these tables.
GENERATED_SOUNDS = versioned(
    "generated_sounds",
    1,
    [
        pa.field("file", pa.string(), nullable=False),
        *GENERATION,
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
    ],
)

# What the generate stage is given: one row per sound to make, its file name and the seed derived
# from its prompt.
GENERATION_REQUESTS = versioned(
    "generation_requests",
    1,
    [pa.field("file", pa.string(), nullable=False), *GENERATION],
)
