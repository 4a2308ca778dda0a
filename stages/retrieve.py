"""CLAP text-to-audio search, one chunk of scenes at a time.

The actor loads the CLAP text encoder, the FAISS index and its row -> clip_id map once. For each
chunk it embeds the chunk's distinct concept texts and searches them all in one FAISS call, then
writes the chunk's matches and, last, its search stats, which mark the chunk searched. A text that
recurs in another chunk is embedded and searched again there: that keeps every chunk independent
of the others (and of the driver), at the price counted in the run summary as texts searched per
distinct text of a chunk.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CHUNK_TASKS, MATCHES, make_table
from schemas.config import ClapConfig, RetrievalConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages import index as faiss_index
from stages import storage
from stages.base import Resources, Stage
from stages.clap import load_clap


def concept_texts(scenes: pa.Table) -> list[str]:
    """The distinct concept texts, sorted, of the scenes that go on to retrieval (no error, not dropped)."""
    going_on = scenes.filter(pc.is_null(pc.field("error")) & pc.is_null(pc.field("dropped")))
    texts = pc.struct_field(pc.list_flatten(going_on.column("concepts")), "text")
    return pc.unique(texts.drop_null()).sort().to_pylist() if len(texts) else []


def embed_and_search(model, index, texts: list[str], batch_size: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeds `texts` in batches of the text encoder and searches all of them in one FAISS call:
    FAISS reaches its speed on thousands of queries at once."""
    vectors = [model.embed_text(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    return faiss_index.search(index, np.concatenate(vectors), search_k)


class RetrieveChunks(Stage):
    name: ClassVar[str] = "retrieve_chunks"
    required_columns: ClassVar[tuple[str, ...]] = tuple(CHUNK_TASKS.names)

    def __init__(self, pool_dir: str, out_dir: str, vlms: list[str], clap: ClapConfig, retrieval: RetrievalConfig) -> None:
        self.pool_dir = pool_dir
        self.out_dir = out_dir
        self.vlms = list(vlms)
        self.clap_config = clap
        self.retrieval = retrieval
        self.model = self.index = self.clip_ids = None

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return CHUNK_TASKS

    def setup(self) -> None:
        self.model = load_clap(self.clap_config)
        self.index = faiss_index.deserialize(storage.read_bytes(PoolLayout(self.pool_dir).index_file()))
        ids = storage.read_parquet(PoolLayout(self.pool_dir).index_ids())
        self.clip_ids = np.array(ids.sort_by("row").column("clip_id").to_pylist(), dtype=object)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        layout = SonifyLayout(self.out_dir)
        for chunk in batch.column("chunk").to_pylist():
            if not storage.exists(layout.search_stats(chunk)):
                scenes = pa.concat_tables(
                    storage.read_parquet(layout.scenes(vlm, chunk), columns=["concepts", "dropped", "error"]) for vlm in self.vlms
                )
                matches, stats = self.search(concept_texts(scenes))
                storage.write_parquet(layout.matches(chunk), matches)
                storage.write_text(layout.search_stats(chunk), json.dumps(stats) + "\n")
        return batch

    def search(self, texts: list[str]) -> tuple[pa.Table, dict]:
        """The MATCHES table of `texts`, and how they were searched."""
        if not texts:
            return MATCHES.empty_table(), {"texts": 0}
        scores, rows = embed_and_search(self.model, self.index, texts, self.clap_config.batch_size, self.retrieval.search_k)
        found = [r >= 0 for r in rows]
        matches = make_table(
            MATCHES,
            {
                "text": texts,
                "clip_ids": [self.clip_ids[r[ok]].tolist() for r, ok in zip(rows, found)],
                "scores": [s[ok].astype(np.float32) for s, ok in zip(scores, found)],
            },
        )
        return matches, {"texts": len(texts)}
