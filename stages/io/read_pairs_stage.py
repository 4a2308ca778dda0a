"""Reads blocks of image-audio pairs (stages.io.pairs) for mapper training: one block row in, its pairs out."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from schemas.base import make_table
from schemas.mapper import PAIRS
from schemas.mapper_config import MapperConfig
from stages.base import Stage
from stages.io.pairs import read_block


class ReadPairs(Stage):
    name: ClassVar[str] = "read_pairs"
    required_columns: ClassVar[tuple[str, ...]] = ("url", "block")

    def __init__(self, mapper: MapperConfig) -> None:
        self.mapper = mapper

    def output_schema(self) -> pa.Schema:
        return PAIRS

    def process_batch(self, batch: pa.Table) -> pa.Table:
        m = self.mapper
        pairs = [
            pair
            for url, block in zip(batch.column("url").to_pylist(), batch.column("block").to_pylist())
            for pair in read_block(url, block, m.pairs_per_block, m.image_column, m.audio_column, m.key_column)
        ]
        return make_table(
            PAIRS,
            {
                "key": [p.key for p in pairs],
                "source": [p.source for p in pairs],
                "image": [p.image for p in pairs],
                "audio": [p.audio for p in pairs],
                "error": [p.error for p in pairs],
            },
        )
