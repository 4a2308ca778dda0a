"""Tables of a report: the problems found in a run, by kind, and the samples shown in its gallery."""

import pyarrow as pa

from schemas.base import versioned

PROBLEM_EXAMPLE = pa.struct([pa.field("file", pa.string()), pa.field("reason", pa.string())])

# One row per kind of error or drop: how many rows of the run it covers, and the first few of them.
REPORT_PROBLEMS = versioned(
    "report_problems",
    1,
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("examples", pa.list_(PROBLEM_EXAMPLE), nullable=False),
    ],
)

GALLERY_CONCEPT = pa.struct(
    [
        pa.field("label", pa.string()),
        pa.field("text", pa.string()),
        pa.field("clip_id", pa.string()),
        pa.field("cosine", pa.float64()),
        pa.field("gain_db", pa.float64()),
        # Where the clip comes from in the pool; null when the pool does not hold the clip (any more).
        pa.field("clip_source_uri", pa.string()),
        pa.field("clip_start_s", pa.float64()),
    ]
)

# The samples a report shows: the written samples of a manifest with the lowest and highest alignment
# scores, then a seeded random choice among the others. 2: the scores, and why a sample is shown.
GALLERY_ITEMS = versioned(
    "gallery_items",
    2,
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("image_member", pa.string()),
        pa.field("vlm", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("mix_lufs", pa.float64()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("concepts", pa.list_(GALLERY_CONCEPT)),
        pa.field("text_audio", pa.float64()),
        pa.field("image_audio", pa.float64()),
        # Why the sample is shown, e.g. "lowest image_audio"; null for the random choice.
        pa.field("shown_for", pa.string()),
    ],
)
