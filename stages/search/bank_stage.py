"""The hubness bank and the clips' biases, made once per run before the first chunk is searched.

One actor loads the CLAP text encoder and the pool's index. The bank is `retrieval.hubness_bank`
concept texts evenly spaced in the sorted distinct texts of the first chunks that hold that many
(as the calibration texts are picked: they depend on the scenes alone). Their embeddings, each
text's nearest clips and every indexed clip's bias are written to sonify.out/hubness/, then
hubness.json, which marks them complete. A rerun reuses them; a pool extended before retrieval
started gets the biases of its new clips only, and each bank text's nearest clips merged with them.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CHUNK_TASKS, CLIP_BIASES, HUB_BANK, make_table
from stages.base import Resources
from stages.embed.clap import load_clap
from stages.io import storage
from stages.search import faiss_index, hubness
from stages.search.search_stage import SCENE_COLUMNS, ChunkTextStage, calibration_texts, concept_texts, embed


class BuildHubBank(ChunkTextStage):
    name: ClassVar[str] = "build_hub_bank"

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=1, batch_size=None)

    def output_schema(self) -> pa.Schema:
        return CHUNK_TASKS

    def chunk_texts(self, chunk: str) -> list[str]:
        layout = self.layout
        return concept_texts(
            pa.concat_tables(
                storage.read_parquet(layout.scenes(vlm, chunk), columns=SCENE_COLUMNS) for vlm in self.vlms
            )
        )

    def bank(self, chunks: list[str]) -> pa.Table:
        """The bank as stored, or picked and embedded now (with no neighbours yet)."""
        layout = self.layout
        if storage.exists(layout.hub_bank()):
            return storage.read_parquet(layout.hub_bank())
        texts = calibration_texts((self.chunk_texts(c) for c in sorted(chunks)), self.retrieval.hubness_bank)
        vectors = embed(load_clap(self.clap_config), texts, self.clap_config.batch_size) if texts else []
        return make_table(
            HUB_BANK,
            {
                "text": texts,
                "embedding": [np.asarray(v, np.float32) for v in vectors],
                "neighbour_ids": [[] for _ in texts],
                "neighbour_scores": [np.zeros(0, np.float32) for _ in texts],
            },
        )

    def process_batch(self, batch: pa.Table) -> pa.Table:
        layout, pool = self.layout, self.pool
        ids = storage.read_parquet(pool.index_ids()).sort_by("row").column("clip_id").to_pylist()
        known = storage.read_parquet(layout.clip_biases()) if storage.exists(layout.clip_biases()) else None
        if storage.exists(layout.hubness_stats()) and known is not None:
            if known.column("clip_id").to_pylist() == sorted(ids):
                return batch
        bank = self.bank(batch.column("chunk").to_pylist())
        k = self.retrieval.hubness_k
        position = {c: i for i, c in enumerate(ids)}
        neighbours = hubness.BankNeighbours.restore(
            [[position.get(c, -1) for c in found] for found in bank.column("neighbour_ids").to_pylist()],
            bank.column("neighbour_scores").to_pylist(),
            k,
        )
        wanted = np.ones(len(ids), bool)
        if known is not None:
            wanted[[position[c] for c in known.column("clip_id").to_pylist() if c in position]] = False
        index = faiss_index.deserialize(storage.read_bytes(pool.index_file()))
        rows, biases = np.zeros(0, np.int64), np.zeros(0)
        if bank.num_rows:
            vectors = np.asarray(bank.column("embedding").to_pylist(), np.float32)
            rows, biases = hubness.pool_biases(index, vectors, k, neighbours, wanted)
        new = make_table(CLIP_BIASES, {"clip_id": [ids[r] for r in rows], "bias": list(biases)})
        table = new if known is None else pa.concat_tables([known.filter(pc.is_in("clip_id", pa.array(ids))), new])
        table = table.sort_by("clip_id")
        bank = bank.set_column(
            bank.schema.get_field_index("neighbour_ids"),
            HUB_BANK.field("neighbour_ids"),
            pa.array([[ids[r] for r in row if r >= 0] for row in neighbours.rows], pa.list_(pa.string())),
        ).set_column(
            bank.schema.get_field_index("neighbour_scores"),
            HUB_BANK.field("neighbour_scores"),
            pa.array([s[r >= 0] for s, r in zip(neighbours.scores, neighbours.rows)], pa.list_(pa.float32())),
        )
        correction = hubness.Correction.of_pool(
            table.column("bias").to_numpy(), self.retrieval.hubness_alpha, self.retrieval.hubness_outlier_z
        )
        stats = {
            "bank_texts": bank.num_rows,
            "clips": table.num_rows,
            "centre": correction.centre,
            "spread": correction.spread,
            "k_occurrence_skewness": hubness.skewness(neighbours.k_occurrence(len(ids))),
            "penalized_clips": int(np.count_nonzero(correction.penalties(table.column("bias").to_numpy()))),
        }
        storage.write_parquet(layout.hub_bank(), bank)
        storage.write_parquet(layout.clip_biases(), table)
        storage.write_text(layout.hubness_stats(), json.dumps(stats) + "\n")
        return batch
