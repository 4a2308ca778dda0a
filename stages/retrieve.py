"""CLAP text-to-audio search: each distinct concept text is embedded once and searched once.

The actor loads the CLAP text encoder, the FAISS index and its row -> clip_id map once, and returns
the top-K clips and cosines of each text. An approximate index is searched at the setting that
reaches the recall target on the texts of the same call (`stages.index.search_queries`)."""

from __future__ import annotations

from typing import ClassVar

import faiss
import numpy as np
import pyarrow as pa

from schemas.config import ClapConfig, RetrievalConfig
from schemas import MATCHES, make_table
from schemas.layout import PoolLayout
from stages import index as faiss_index
from stages import storage
from stages.base import Resources, Stage
from stages.clap import ClapBackend, load_clap


def embed_and_search(
    model: ClapBackend, index: faiss.Index, texts: list[str], batch_size: int, search_k: int, recall: faiss_index.RecallTarget
) -> faiss_index.SearchResult:
    """Top-search_k of every text: embedded in CLAP batches of `batch_size`, then searched in one
    call, so that one recall sample and one FAISS call serve all the texts."""
    if not texts:
        return faiss_index.search_queries(index, np.zeros((0, index.d), dtype=np.float32), search_k, recall)
    batches = [model.embed_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return faiss_index.search_queries(index, np.concatenate(batches), search_k, recall)


class RetrieveClips(Stage):
    name: ClassVar[str] = "retrieve_clips"
    required_columns: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, pool_dir: str, clap: ClapConfig, retrieval: RetrievalConfig) -> None:
        self.pool_dir = pool_dir
        self.clap_config = clap
        self.search_k = retrieval.search_k
        self.recall = faiss_index.RecallTarget.from_config(retrieval)
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
        result = embed_and_search(self.model, self.index, texts, self.clap_config.batch_size, self.search_k, self.recall)
        found = [r >= 0 for r in result.rows]
        return make_table(
            MATCHES,
            {
                "text": texts,
                "clip_ids": [self.clip_ids[r[ok]].tolist() for r, ok in zip(result.rows, found)],
                "scores": [s[ok].astype(np.float32) for s, ok in zip(result.scores, found)],
            },
        )
