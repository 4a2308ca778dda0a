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

# A sounding concept of a scene. A VLM's has a text (its query, through CLAP's text encoder) and no
# vector; a mapper's (backend: mapper) has no text, its label is the mapper's name and its vector,
# the image's CLIP embedding mapped into CLAP's audio space (unit length), is its query.
CONCEPT = pa.struct(
    [pa.field("label", pa.string()), pa.field("text", pa.string()), pa.field("vector", pa.list_(pa.float32()))]
)

# sonify.out/scenes/<vlm>/NNNNNN.parquet: one row per image of chunk NNNNNN and VLM, with the
# parsed answer (or, for a mapper, no answer and the one mapped concept).
# 3: each concept's vector (mapper concepts).
SCENES = versioned(
    "scenes",
    3,
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
# and of each mapped concept (one per image and mapper), best first by the score the threshold runs on.
# 2: the hubness-corrected scores beside the raw cosines; 3: the mapped concepts' rows (text null,
# mapper and image_id set).
MATCHES = versioned(
    "matches",
    3,
    [
        # The concept text searched; null for a mapped concept.
        pa.field("text", pa.string()),
        # A mapped concept's mapper (its models.vlm name) and image; null for a text.
        pa.field("mapper", pa.string()),
        pa.field("image_id", pa.string()),
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

# Where a concept's query came from: `text` (a VLM's words, through CLAP's text encoder) or `mapper`
# (the image mapped into CLAP's audio space; label the mapper's name, text null).
CONCEPT_SOURCES = ("text", "mapper")

MANIFEST_CONCEPT = pa.struct(
    [
        pa.field("label", pa.string()),
        pa.field("text", pa.string()),
        # text or mapper (CONCEPT_SOURCES).
        pa.field("source", pa.string()),
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
        # The clip's licence (SPDX-style id, null where the pool has none), author or credit, where
        # its recording is published and its title, from the pool's clips table.
        pa.field("license", pa.string()),
        pa.field("attribution", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("title", pa.string()),
    ]
)

# A concept that got no clip: `reason` is below_min_cosine, no_usable_clip, clip_cap
# (stages.search.choice.DroppedConcept) or other_split (sonify.split_by_clip); `best_cosine` the
# highest raw cosine among its neighbours (null when the search returned none).
DROPPED_CONCEPT = pa.struct(
    [
        pa.field("label", pa.string()),
        pa.field("text", pa.string()),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("best_cosine", pa.float64()),
    ]
)

# sonify.out/manifest/NNNNNN.parquet (one per shard) and manifest/rejected-NNNNNN.parquet (one per
# chunk of images: scenes that became no sample, with the reason in `error`).
# 2: the shard's image (extension, size) beside the source's; 3: error_kind as well; 4: each concept's
# corrected_cosine beside its raw cosine; 5: the concepts dropped at retrieval, each with its reason,
# and the sample's split; 6: the licence and credit of each concept's clip and of the image, and
# whether the clip was generated; 7: each concept's source (text or mapper), kept or dropped; 8: the
# sample's alignment scores (text_audio, image_audio).
MANIFEST = versioned(
    "manifest",
    8,
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
        # The image's licence, author or credit, where it is published and its title, from
        # sonify.image_metadata; null where it names none.
        pa.field("image_license", pa.string()),
        pa.field("image_attribution", pa.string()),
        pa.field("image_source_url", pa.string()),
        pa.field("image_title", pa.string()),
        pa.field("concepts", pa.list_(MANIFEST_CONCEPT)),
        # Concepts of the scene that got no clip: those with empty text (counted only) and those
        # dropped at retrieval (listed in `dropped`).
        pa.field("dropped_concepts", pa.int32()),
        pa.field("dropped", pa.list_(DROPPED_CONCEPT)),
        pa.field("mix_gain_db", pa.float64()),
        pa.field("mix_lufs", pa.float64()),
        pa.field("mix_peak_dbfs", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("duration_s", pa.float64()),
        pa.field("seed", pa.int64()),
        pa.field("shard", pa.string()),
        # The sample's split (sonify.splits); null without splits.
        pa.field("split", pa.string()),
        # The mean raw cosine of the sample's text concepts (source text) to their clips; null for a
        # sample with no text concept (a mapper's scene). Set when the shard is mixed.
        pa.field("text_audio", pa.float64()),
        # The cosine of the image's CLIP embedding, mapped by the first mapper of models.vlm, to the CLAP
        # embedding of the stored mix; null when no mapper is configured. Set when the shard is written.
        pa.field("image_audio", pa.float64()),
        pa.field("error", pa.string()),
        # The kind of `error`: an image or VLM error's kind, or the drop reason (too_small, non_sonic,
        # no_concepts, no_usable_clip, low_alignment); null for samples.
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
# 4: clip locations (byte ranges) instead of parts; 5: the manifest of version 4; 6: of version 5;
# 7: of version 6; 8: of version 7; 9: of version 8.
SHARD_PLANS = versioned(
    "shard_plans",
    9,
    [*MANIFEST, pa.field("clip_locations", pa.list_(CLIP_LOCATION), nullable=False)],
)
# sonify.out/mix_clips.parquet: every pool clip audible at mix.sample_rate, sorted by clip_id; the
# clips retrieval searches and planning may choose (sonify.licenses allows), their loudness at that
# rate, where their audio is, and their credit for the manifest.
# 2: the clip's source recording (sonify.split_by_clip puts a recording in one split); 3: the credit
# columns, and whether the clip is generated (retrieval.allow_generated false leaves generated clips out).
MIX_CLIPS = versioned(
    "mix_clips",
    3,
    [
        pa.field("clip_id", pa.string(), nullable=False),
        # The clip's source recording, by content: the SHA-256 of its source file (its source id where
        # none was taken), so copies of one file are one recording.
        pa.field("recording", pa.string(), nullable=False),
        pa.field("lufs", pa.float64(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
        pa.field("audio_offset", pa.int64(), nullable=False),
        pa.field("audio_bytes", pa.int64(), nullable=False),
        pa.field("generated", pa.bool_(), nullable=False),
        *(MANIFEST_CONCEPT.field(name) for name in ("license", "attribution", "source_url", "title")),
    ],
)
# sonify.out/image_credits.parquet: the credit of every listed image that sonify.image_metadata
# names, sorted by image_id; planning puts it in the image's manifest rows.
IMAGE_CREDITS = versioned(
    "image_credits",
    1,
    [
        pa.field("image_id", pa.string(), nullable=False),
        *(pa.field(f"image_{name}", pa.string()) for name in ("license", "attribution", "source_url", "title")),
    ],
)
# The retrieval and planning stages' work, one row per chunk of images still to plan.
CHUNK_TASKS = versioned("chunk_tasks", 1, [pa.field("chunk", pa.string(), nullable=False)])
# What retrieval wrote for a chunk, one row per chunk: its matches file and how its distinct texts
# were searched (the numbers its search stats file holds). The setting and recall columns are null
# for an exact (flat) index; recall is null too for a chunk that recall_every does not measure.
# 2: hubness_widest_search; 3: mapped_queries.
CHUNK_SEARCHES = versioned(
    "chunk_searches",
    3,
    [
        pa.field("chunk", pa.string(), nullable=False),
        pa.field("matches_url", pa.string(), nullable=False),
        pa.field("texts", pa.int64(), nullable=False),
        # Mapped concepts (backend: mapper) searched by their vectors, one per image and mapper.
        pa.field("mapped_queries", pa.int64(), nullable=False),
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
# rejected scenes, and the counts its plan stats file holds. 2: CHUNK_SEARCHES 2, concepts_clip_cap;
# 3: each shard's split, and the concepts that sonify.split_by_clip dropped or changed; 4: CHUNK_SEARCHES 3,
# mapped_concepts_missing.
CHUNK_PLANS = versioned(
    "chunk_plans",
    4,
    [
        *CHUNK_SEARCHES,
        pa.field("shard_plan_urls", pa.list_(pa.string()), nullable=False),
        pa.field("rejected_url", pa.string(), nullable=False),
        pa.field("shards", pa.int64(), nullable=False),
        # The split of each shard (null without sonify.splits), in shard order.
        pa.field("shard_splits", pa.list_(pa.string()), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("rejected", pa.int64(), nullable=False),
        pa.field("concepts_below_min_cosine", pa.int64(), nullable=False),
        pa.field("concepts_no_usable_clip", pa.int64(), nullable=False),
        # Concepts dropped because every usable neighbour was at retrieval.max_uses_per_clip.
        pa.field("concepts_clip_cap", pa.int64(), nullable=False),
        # sonify.split_by_clip: concepts left without a clip because every usable neighbour belongs to
        # another split, and concepts that got another clip than they would have without the rule.
        pa.field("concepts_other_split", pa.int64(), nullable=False),
        pa.field("concepts_rechosen_for_split", pa.int64(), nullable=False),
        # Mapped concepts below retrieval.min_cosine or without a usable clip: they have no text, so the
        # missing-sounds list (missing/) leaves them out and counts them here.
        pa.field("mapped_concepts_missing", pa.int64(), nullable=False),
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

# A mixed sample's members as the shard writer stores them: the image under its extension and the mix.
# Its JSON member (stages.pairing.shards.sample_metadata) is made by the writer from its final
# manifest row.
MIXED_SAMPLE = pa.struct(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_extension", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("flac", pa.binary(), nullable=False),
    ]
)
# One shard mixed and not yet written, on its way through the feature models (sonify.features): a
# row per shard, so its samples stay together whichever worker embeds them. 2: no JSON member (the
# writer makes it).
MIXED_SHARDS = versioned(
    "mixed_shards",
    2,
    [
        pa.field("shard", pa.string(), nullable=False),
        # The shard's MANIFEST rows, error rows included, as an Arrow IPC stream.
        pa.field("manifest", pa.binary(), nullable=False),
        pa.field("samples", pa.list_(MIXED_SAMPLE), nullable=False),
        pa.field("pool_bytes_read", pa.int64(), nullable=False),
        pa.field("pool_clip_bytes", pa.int64(), nullable=False),
    ],
)


# The column the alignment stage adds to a mixed shard: each sample's image_audio score, in the order
# of `samples`.
IMAGE_AUDIO_COLUMN = pa.field("image_audio", pa.list_(pa.float64()), nullable=False)


def mixed_shards_schema(features: list[str] | tuple[str, ...], aligned: bool = False) -> pa.Schema:
    """MIXED_SHARDS with a column per feature already computed: each sample's vector as the bytes of
    its KEY.<feature>.npy member, in the order of `samples`; and, once `aligned`, IMAGE_AUDIO_COLUMN."""
    return pa.schema(
        [
            *MIXED_SHARDS,
            *(pa.field(name, pa.list_(pa.binary()), nullable=False) for name in features),
            *([IMAGE_AUDIO_COLUMN] if aligned else []),
        ],
        metadata=MIXED_SHARDS.metadata,
    )


# An image a missing sound was heard in.
MISSING_EXAMPLE = pa.struct(
    [
        pa.field("image_id", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("image_member", pa.string()),
    ]
)
# The counts and examples of the texts that got no usable clip, by text; the same columns per
# chunk, per distinct text and per group of near-identical texts.
_MISSING_COUNTS = [
    # Concepts that asked for the text (or the group).
    pa.field("requests", pa.int64(), nullable=False),
    pa.field("below_min_cosine", pa.int64(), nullable=False),
    pa.field("no_usable_clip", pa.int64(), nullable=False),
    # The highest raw cosine any pool clip reached for it; null when the search returned no clip.
    pa.field("best_cosine", pa.float64()),
    # A few images it was heard in, the first by image id.
    pa.field("examples", pa.list_(MISSING_EXAMPLE), nullable=False),
]
# sonify.out/missing/NNNNNN.parquet: the concept texts of chunk NNNNNN that got no usable clip
# (dropped below retrieval.min_cosine, or with no usable neighbour left).
MISSING_TEXTS = versioned("missing_texts", 1, [pa.field("text", pa.string(), nullable=False), *_MISSING_COUNTS])
# sonify.out/missing_sound_texts.parquet: every distinct missing text of the run, most requested
# first, with the group it joined (named by the group's first text) and its cosine to that text.
MISSING_SOUND_TEXTS = versioned(
    "missing_sound_texts",
    1,
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("group_text", pa.string(), nullable=False),
        pa.field("cosine_to_group", pa.float64(), nullable=False),
        *_MISSING_COUNTS,
    ],
)
# sonify.out/missing_sounds.parquet: the run's missing sounds, one row per group of near-identical
# texts (sonify.missing_sounds.group_cosine), most requested first: the sounds to add to the pool.
MISSING_SOUNDS = versioned(
    "missing_sounds",
    1,
    [
        # The group's most requested text.
        pa.field("text", pa.string(), nullable=False),
        # Distinct texts in the group, and the most requested of them (sonify.missing_sounds.member_texts).
        pa.field("texts", pa.int64(), nullable=False),
        pa.field("member_texts", pa.list_(pa.string()), nullable=False),
        *_MISSING_COUNTS,
    ],
)
