"""Tables of a sonify run: listed images, scenes (image x VLM), concept matches, the manifest."""

import pyarrow as pa

from schemas.base import versioned

# The driver's listing of the inputs; the work plan of the images stage.
IMAGE_REFS = versioned(
    "image_refs",
    2,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("member", pa.string()),
        pa.field("error", pa.string()),
        # What kind of error `error` is (empty, undecodable, unreadable, ...); null when `error` is.
        pa.field("error_kind", pa.string()),
    ],
)

# The images stage's output: what each image is, and its bytes for the VLM.
IMAGES = versioned(
    "images",
    2,
    [
        *IMAGE_REFS,
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("num_bytes", pa.int64()),
        pa.field("image_bytes", pa.binary()),
        # Why a valid image is not sonified: too_small (below sonify.min_side).
        pa.field("dropped", pa.string()),
        # Where `error` was set: images, vlm or concepts.
        pa.field("error_stage", pa.string()),
    ],
)

# What every VLM backend adds to an image row: its raw answer (null when it gave none).
ANSWERS = versioned("answers", 2, [*IMAGES, pa.field("answer", pa.string())])

CONCEPT = pa.struct([pa.field("label", pa.string()), pa.field("text", pa.string())])

# sonify.out/scenes/<vlm>/NNNNNN.parquet: one row per image of chunk NNNNNN and VLM, with the
# parsed answer.
SCENES = versioned(
    "scenes",
    2,
    [
        *(IMAGES.field(name) for name in ("image_id", "uri", "member", "width", "height", "format", "num_bytes")),
        pa.field("vlm", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("concepts", pa.list_(CONCEPT)),
        pa.field("dropped_empty_concepts", pa.int32()),
        # too_small, non_sonic or no_concepts; null when the scene goes on to retrieval.
        pa.field("dropped", pa.string()),
        *(IMAGES.field(name) for name in ("error", "error_kind", "error_stage")),
    ],
)

# sonify.out/matches/NNNNNN.parquet: the top-K pool clips of each distinct concept text of chunk NNNNNN,
# best first by the score the threshold runs on.
# 2: the hubness-corrected scores beside the raw cosines.
MATCHES = versioned(
    "matches",
    2,
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("clip_ids", pa.list_(pa.string())),
        # Raw cosines.
        pa.field("scores", pa.list_(pa.float32())),
        # Cosine less each clip's hubness penalty (retrieval.hubness); null with hubness: none.
        pa.field("corrected", pa.list_(pa.float32())),
    ],
)

# sonify.out/hubness/bank.parquet: the reference bank, concept texts of the run and their CLAP
# embeddings, with each text's hubness_k nearest pool clips (for the k-occurrence).
HUB_BANK = versioned(
    "hub_bank",
    1,
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
        pa.field("neighbour_ids", pa.list_(pa.string()), nullable=False),
        pa.field("neighbour_scores", pa.list_(pa.float32()), nullable=False),
    ],
)

# sonify.out/hubness/biases.parquet: every indexed clip's bias against the bank (mean cosine to its
# hubness_k nearest bank texts), sorted by clip_id.
CLIP_BIASES = versioned(
    "clip_biases",
    1,
    [pa.field("clip_id", pa.string(), nullable=False), pa.field("bias", pa.float64(), nullable=False)],
)

MANIFEST_CONCEPT = pa.struct(
    [
        pa.field("label", pa.string()),
        pa.field("text", pa.string()),
        pa.field("clip_id", pa.string()),
        # Raw cosine of text and clip; retrieval.min_cosine is a floor on it.
        pa.field("cosine", pa.float64()),
        # The score SSR and the threshold ran on: the cosine less the clip's hubness penalty (equal to
        # the cosine with retrieval.hubness: none).
        pa.field("corrected_cosine", pa.float64()),
        pa.field("ssr", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("n_candidates", pa.int32()),
        # tau <= 0: the top-1 clip was taken without sampling.
        pa.field("fallback", pa.bool_()),
        # The clip is of a generated source (`run_pipeline.py generate`), not of a recording.
        pa.field("generated", pa.bool_()),
        pa.field("target_lufs", pa.float64()),
        pa.field("clip_lufs", pa.float64()),
        pa.field("gain_db", pa.float64()),
    ]
)

# sonify.out/manifest/NNNNNN.parquet (one per shard) and manifest/rejected-NNNNNN.parquet (one per
# chunk of images: scenes that became no sample, with the reason in `error`).
# 2: the shard's image (extension, size) beside the source's; 3: error_kind as well; 4: each concept's
# corrected_cosine beside its raw cosine; 5: each concept's `generated`, whether its clip was generated.
MANIFEST = versioned(
    "manifest",
    5,
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("image_member", pa.string()),
        pa.field("image_format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        # The image as the shard carries it (sonify.image_format, sonify.max_image_side); set when
        # the shard is written.
        pa.field("shard_image_extension", pa.string()),
        pa.field("shard_image_width", pa.int32()),
        pa.field("shard_image_height", pa.int32()),
        pa.field("vlm", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("concepts", pa.list_(MANIFEST_CONCEPT)),
        pa.field("dropped_concepts", pa.int32()),
        pa.field("mix_gain_db", pa.float64()),
        pa.field("mix_lufs", pa.float64()),
        pa.field("mix_peak_dbfs", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("duration_s", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("shard", pa.string()),
        pa.field("error", pa.string()),
        # The kind of `error`: an image or VLM error's kind, or the drop reason (too_small, non_sonic,
        # no_concepts, no_usable_clip); null for samples.
        pa.field("error_kind", pa.string()),
    ],
)

# Where a clip's FLAC bytes sit in the pool: its part, and their byte range in that part's pack at
# the mix rate (pool.dir/audio/<rate>/<part>.tar).
CLIP_LOCATION = pa.struct(
    [
        pa.field("part", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
    ]
)

# Parquet key-value metadata of a shard's manifest part: the bytes its mixing read from the pool and
# the stored size of the distinct clips it used, so a run's totals cover shards written by earlier
# runs of the same sonify.out too.
MANIFEST_POOL_READS = ("pool_bytes_read", "pool_clip_bytes")

# sonify.out/plans/CCCCCC-PPPPPP.parquet (shard P of chunk C) and render.out/plans/NNNNNN.parquet:
# a shard's manifest rows before mixing, each with the location of every concept's clip (in the
# order of `concepts`), so a writer reads no pool table of its own.
# 2: manifest rows plus clip parts, replacing IPC bytes; 3: the manifest of version 3;
# 4: clip locations (byte ranges) instead of parts; 5: the manifest of version 4.
SHARD_PLANS = versioned(
    "shard_plans",
    5,
    [*MANIFEST, pa.field("clip_locations", pa.list_(CLIP_LOCATION), nullable=False)],
)
# sonify.out/mix_clips.parquet: every pool clip audible at mix.sample_rate, sorted by clip_id; the
# clips planning may choose, their loudness at that rate, where their audio is, and whether the clip
# is generated (with retrieval.allow_generated false, generated clips are left out). 2: generated.
MIX_CLIPS = versioned(
    "mix_clips",
    2,
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("lufs", pa.float64(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
        pa.field("audio_offset", pa.int64(), nullable=False),
        pa.field("audio_bytes", pa.int64(), nullable=False),
        pa.field("generated", pa.bool_(), nullable=False),
    ],
)
# The retrieval and planning stages' work, one row per chunk of images still to plan.
CHUNK_TASKS = versioned("chunk_tasks", 1, [pa.field("chunk", pa.string(), nullable=False)])
# What retrieval wrote for a chunk, one row per chunk: its matches file and how its distinct texts
# were searched (the numbers its search stats file holds). The setting and recall columns are null
# for an exact (flat) index; recall is null too for a chunk that recall_every does not measure.
# 2: hubness_widest_search.
CHUNK_SEARCHES = versioned(
    "chunk_searches",
    2,
    [
        pa.field("chunk", pa.string(), nullable=False),
        pa.field("matches_url", pa.string(), nullable=False),
        pa.field("texts", pa.int64(), nullable=False),
        # The nprobe (IVF) or efSearch (HNSW) the run searches at, chosen by calibration.
        pa.field("setting", pa.int64()),
        pa.field("calibration_recall", pa.float64()),
        pa.field("calibration_queries", pa.int64()),
        pa.field("recall_k", pa.int64()),
        pa.field("recall", pa.float64()),
        pa.field("recall_queries", pa.int64()),
        # With retrieval.hubness on: the widest raw search (K') the chunk's certified re-rank needed.
        pa.field("hubness_widest_search", pa.int64()),
    ],
)
# What planning wrote for a chunk, one row per chunk: its search (carried through, so the driver gets
# one row per chunk from the retrieve-then-plan pipeline), its shard plans in shard order, its
# rejected scenes, and the counts its plan stats file holds. 2: CHUNK_SEARCHES 2, concepts_clip_cap.
CHUNK_PLANS = versioned(
    "chunk_plans",
    2,
    [
        *CHUNK_SEARCHES,
        pa.field("shard_plan_urls", pa.list_(pa.string()), nullable=False),
        pa.field("rejected_url", pa.string(), nullable=False),
        pa.field("shards", pa.int64(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("rejected", pa.int64(), nullable=False),
        pa.field("concepts_below_min_cosine", pa.int64(), nullable=False),
        pa.field("concepts_no_usable_clip", pa.int64(), nullable=False),
        # Concepts dropped because every usable neighbour was at retrieval.max_uses_per_clip.
        pa.field("concepts_clip_cap", pa.int64(), nullable=False),
        pa.field("fallbacks", pa.int64(), nullable=False),
        # The chunk's first rejection reasons (at most stages.pairing.planning.MAX_REPORTED_REASONS).
        pa.field("rejection_reasons", pa.list_(pa.string()), nullable=False),
    ],
)
# The write stage's work, one row per shard still to write; the driver never holds the plans.
SHARD_TASKS = versioned(
    "shard_tasks",
    1,
    [pa.field("shard", pa.string(), nullable=False), pa.field("plan_url", pa.string(), nullable=False)],
)
# 2: what mixing read from the pool beside what its clips take there, so a run can report the ratio.
SHARD_RESULTS = versioned(
    "shard_results",
    2,
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("samples", pa.int64()),
        pa.field("errors", pa.int64()),
        pa.field("num_bytes", pa.int64()),
        # Bytes the shard's mixing read from the pool's packs, tar headers and coalesced gaps included.
        pa.field("pool_bytes_read", pa.int64()),
        # Stored bytes (FLAC at the mix rate) of the distinct clips the shard uses.
        pa.field("pool_clip_bytes", pa.int64()),
    ],
)
