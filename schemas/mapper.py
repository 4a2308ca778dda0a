"""Tables of mapper training: blocks of image-audio pairs to read, the pairs, and their embeddings.

A pair's `image_embedding` (CLIP) and `audio_embedding` (CLAP) are null where the pair failed;
`error` then says why, naming the file the pair came from."""

import pyarrow as pa

from schemas.base import versioned

# One row per block of pairs: `block` counts blocks of mapper.pairs_per_block pairs in the file.
PAIR_BLOCKS = versioned(
    "pair_blocks",
    1,
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("block", pa.int64(), nullable=False),
    ],
)

_PAIR_KEY = [pa.field("key", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False)]

PAIRS = versioned(
    "pairs",
    1,
    [*_PAIR_KEY, pa.field("image", pa.binary()), pa.field("audio", pa.binary()), pa.field("error", pa.string())],
)


def image_embedded_pairs_schema(clip_dim: int) -> pa.Schema:
    return versioned(
        "image_embedded_pairs",
        1,
        [
            *_PAIR_KEY,
            pa.field("audio", pa.binary()),
            pa.field("image_embedding", pa.list_(pa.float32(), clip_dim)),
            pa.field("error", pa.string()),
        ],
    )


def embedded_pairs_schema(clip_dim: int, clap_dim: int) -> pa.Schema:
    return versioned(
        "embedded_pairs",
        1,
        [
            *_PAIR_KEY,
            pa.field("image_embedding", pa.list_(pa.float32(), clip_dim)),
            pa.field("audio_embedding", pa.list_(pa.float32(), clap_dim)),
            pa.field("error", pa.string()),
        ],
    )
