"""CLAP text-to-audio search: each distinct concept text is embedded once and searched once.

The actor loads the CLAP text encoder, the FAISS index and its row -> clip_id map once, and returns
the top-K clips and cosines of each text."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from schemas.config import ClapConfig
from schemas import MATCHES, make_table
from schemas.layout import PoolLayout
from stages import index as faiss_index
from stages import storage
from stages.base import Resources, Stage
from stages.clap import load_clap


class RetrieveClips(Stage):
    name: ClassVar[str] = "retrieve_clips"
    required_columns: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, pool_dir: str, clap: ClapConfig, search_k: int) -> None:
        self.pool_dir = pool_dir
        self.clap_config = clap
        self.search_k = search_k
        self.model = self.index = self.clip_ids = None

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=c.batch_size)

    def output_schema(self) -> pa.Schema:
        return MATCHES

    def setup(self) -> None:
        self.model = load_clap(self.clap_config)
        self.index = faiss_index.deserialize(storage.read_bytes(PoolLayout(self.pool_dir).index_file()))
        ids = storage.read_parquet(PoolLayout(self.pool_dir).index_ids())
        self.clip_ids = np.array(ids.sort_by("row").column("clip_id").to_pylist(), dtype=object)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        scores, rows = faiss_index.search(self.index, self.model.embed_text(texts), self.search_k)
        found = [r >= 0 for r in rows]
        return make_table(
            MATCHES,
            {
                "text": texts,
                "clip_ids": [self.clip_ids[r[ok]].tolist() for r, ok in zip(rows, found)],
                "scores": [s[ok].astype(np.float32) for s, ok in zip(scores, found)],
            },
        )
