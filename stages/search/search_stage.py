"""CLAP text-to-audio search, one chunk of scenes at a time.

The actor loads the CLAP text encoder, the FAISS index and its row -> clip_id map once. For each
chunk it embeds the chunk's distinct concept texts and searches them all in one FAISS call, then
writes the chunk's matches and, last, its search stats, which mark the chunk searched; its output
row (CHUNK_SEARCHES) says what the chunk's files hold, whether this run or an earlier one wrote
them. A text that recurs in another chunk is embedded and searched again there: that keeps every
chunk independent of the others (and of the driver), at the price counted in the run summary as
texts searched.

An approximate index is searched at one setting for the whole run, chosen when the actor starts
by the recall it reaches on `retrieval.calibration_queries` of the run's own concept texts (the
first chunks' texts, so every actor and every rerun chooses the same); every
`retrieval.recall_every`-th chunk then measures the recall of its own search on
`retrieval.recall_sample` of its queries. A run with no text at all (mapper sources only)
calibrates on its mapped vectors, picked the same way.

Every search, calibration and recall measurement included, is limited to the clips a mix may use:
the rows of mix_clips.parquet (audible at the mix rate, allowed by sonify.licenses), which the run
writes before any chunk is searched. A text's K neighbours are then the best usable clips, not the
best clips of which some planning could not use. An exact (flat) index is replaced by one of the
usable clips alone; an approximate one is searched through a FAISS selector of their rows.

A mapper's concepts (models.vlm backend: mapper, one per image) have no text: their stored vector,
already in CLAP's audio space, is the query. They are searched in the same call as the chunk's
texts, with the same limits, setting and hubness correction, and their matches rows are keyed by
mapper and image instead of text.

With `retrieval.hubness` on, each clip's penalty is computed once from the run's stored biases
(sonify.out/hubness/, made by BuildHubBank before any chunk is searched), and every text's
neighbours are the top-K by corrected score (stages.search.hubness.corrected_search), with their
raw cosines beside.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import ClassVar

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CHUNK_SEARCHES, CHUNK_TASKS, MATCHES, make_table
from schemas.config import ClapConfig, RetrievalConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.base import Resources, Stage
from stages.embed.clap import ClapBackend, load_clap
from stages.io import storage
from stages.search import faiss_index, hubness

SCENE_COLUMNS = ["concepts", "dropped", "error"]
# What the search of a chunk reads of its scenes: the mapped concepts' keys besides.
SEARCH_COLUMNS = ["image_id", "vlm", *SCENE_COLUMNS]
# The CHUNK_SEARCHES columns a chunk's search stats file holds (the approximate-search ones only
# where the index is approximate).
SEARCH_STATS = CHUNK_SEARCHES.names[CHUNK_SEARCHES.names.index("texts") :]


def search_row(layout: SonifyLayout, chunk: str, stats: dict) -> dict:
    """The CHUNK_SEARCHES row of a chunk searched with these stats."""
    return {"chunk": chunk, "matches_url": layout.matches(chunk), **{name: stats.get(name) for name in SEARCH_STATS}}


def searched_chunk(layout: SonifyLayout, chunk: str) -> dict:
    """The CHUNK_SEARCHES row of a chunk searched before, from its search stats file."""
    return search_row(layout, chunk, json.loads(storage.read_bytes(layout.search_stats(chunk))))


def search_table(rows: list[dict]) -> pa.Table:
    return make_table(CHUNK_SEARCHES, {name: [row[name] for row in rows] for name in CHUNK_SEARCHES.names})


def concept_texts(scenes: pa.Table) -> list[str]:
    """The distinct concept texts, sorted, of the scenes that go on to retrieval (no error, not dropped)."""
    going_on = scenes.filter(pc.is_null(pc.field("error")) & pc.is_null(pc.field("dropped")))
    texts = pc.struct_field(pc.list_flatten(going_on.column("concepts")), "text")
    return pc.unique(texts.drop_null()).sort().to_pylist() if len(texts) else []


@dataclass(frozen=True)
class MappedQueries:
    """The mapped concepts of a chunk's scenes: each one's mapper (its models.vlm name), image and vector."""

    mappers: list[str]
    image_ids: list[str]
    vectors: np.ndarray  # [n, dim] float32

    def __len__(self) -> int:
        return len(self.mappers)


def mapped_queries(scenes: pa.Table) -> MappedQueries:
    """The concepts with a vector (a mapper's) of the scenes that go on to retrieval, in scene order."""
    going_on = scenes.filter(pc.is_null(pc.field("error")) & pc.is_null(pc.field("dropped")))
    lengths = pc.list_value_length(going_on.column("concepts")).fill_null(0).to_numpy(zero_copy_only=False)
    concepts = pc.list_flatten(going_on.column("concepts"))
    owner = np.repeat(np.arange(going_on.num_rows), lengths)
    vectors = pc.struct_field(concepts, "vector") if len(concepts) else pa.array([], pa.list_(pa.float32()))
    has = np.asarray(pc.is_valid(vectors).to_numpy(zero_copy_only=False), dtype=bool)
    if not has.any():
        return MappedQueries([], [], np.zeros((0, 0), np.float32))
    kept = vectors.filter(pa.array(has))
    flat = np.asarray(pc.list_flatten(kept).to_numpy(zero_copy_only=False), dtype=np.float32)
    rows = owner[has]
    return MappedQueries(
        going_on.column("vlm").take(pa.array(rows)).to_pylist(),
        going_on.column("image_id").take(pa.array(rows)).to_pylist(),
        flat.reshape(len(kept), -1),
    )


def embed(model: ClapBackend, texts: list[str], batch_size: int) -> np.ndarray:
    """CLAP text embeddings of `texts`, computed in batches of `batch_size`; one row per text."""
    batches = [model.embed_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(batches)


def calibration_texts(chunk_texts: Iterable[list[str]], count: int) -> list[str]:
    """`count` texts evenly spaced in the sorted distinct texts of the first chunks (in chunk order)
    that hold at least that many: they depend only on the scenes, never on which actor asks or when."""
    texts: set[str] = set()
    for chunk in chunk_texts:
        texts.update(chunk)
        if len(texts) >= count:
            break
    ordered = sorted(texts)
    return [ordered[i] for i in faiss_index.sample_rows(len(ordered), count)]


def calibration_vectors(chunk_mapped: Iterable[MappedQueries], count: int) -> np.ndarray:
    """`count` mapped vectors evenly spaced among those of the first chunks (in chunk order, then scene
    order) that hold at least that many: for a run with no concept text to calibrate on."""
    parts, held = [], 0
    for mapped in chunk_mapped:
        if len(mapped):
            parts.append(mapped.vectors)
            held += len(mapped)
        if held >= count:
            break
    if not parts:
        return np.zeros((0, 0), np.float32)
    vectors = np.concatenate(parts)
    return np.ascontiguousarray(vectors[faiss_index.sample_rows(len(vectors), count)], dtype=np.float32)


class ChunkTextStage(Stage):
    """A stage over chunk tasks that embeds the chunks' concept texts with the run's CLAP and
    searches the pool's index: retrieval, and the hubness bank before it."""

    required_columns: ClassVar[tuple[str, ...]] = tuple(CHUNK_TASKS.names)

    def __init__(
        self, pool: PoolLayout, layout: SonifyLayout, vlms: list[str], clap: ClapConfig, retrieval: RetrievalConfig
    ) -> None:
        self.pool = pool
        self.layout = layout
        self.vlms = list(vlms)
        self.clap_config = clap
        self.retrieval = retrieval


class RetrieveChunks(ChunkTextStage):
    name: ClassVar[str] = "retrieve_chunks"

    def __init__(
        self, pool: PoolLayout, layout: SonifyLayout, vlms: list[str], clap: ClapConfig, retrieval: RetrievalConfig
    ) -> None:
        super().__init__(pool, layout, vlms, clap, retrieval)
        self.model = self.index = self.clip_ids = self.calibration = self.penalties = self.allowed = None

    def resources(self) -> Resources:
        c = self.clap_config
        return Resources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, actors=c.concurrency, batch_size=1)

    def output_schema(self) -> pa.Schema:
        return CHUNK_SEARCHES

    def setup(self) -> None:
        self.model = load_clap(self.clap_config)
        self.index = faiss_index.deserialize(storage.read_bytes(self.pool.index_file()))
        ids = storage.read_parquet(self.pool.index_ids())
        self.clip_ids = np.array(ids.sort_by("row").column("clip_id").to_pylist(), dtype=object)
        self.limit_to_usable_clips()
        self.calibration = self.calibrate()
        if self.retrieval.hubness != "none":
            self.penalties = self.clip_penalties()

    def limit_to_usable_clips(self) -> None:
        """Limits every later search to the clips in mix_clips.parquet: an exact index is replaced by
        one of those clips alone (searched at full speed, without a selector), an approximate one
        gets a selector of their rows."""
        usable = storage.read_parquet(self.layout.mix_clips(), columns=["clip_id"]).column("clip_id")
        mask = pc.is_in(pa.array(self.clip_ids.tolist(), pa.string()), value_set=usable)
        allowed = faiss_index.AllowedRows.of(mask.to_numpy(zero_copy_only=False))
        if allowed is not None and isinstance(self.index, faiss.IndexFlat):
            self.index = faiss_index.flat_subset(self.index, allowed)
            self.clip_ids = self.clip_ids[allowed.mask]
            allowed = None
        self.allowed = allowed

    def searchable(self) -> int:
        return faiss_index.searchable_rows(self.index, self.allowed)

    def clip_penalties(self) -> np.ndarray:
        """Each index row's hubness penalty, from the run's stored biases (0 for a clip without one)."""
        biases = storage.read_parquet(self.layout.clip_biases())
        correction = hubness.Correction.of_pool(
            biases.column("bias").to_numpy(), self.retrieval.hubness_alpha, self.retrieval.hubness_outlier_z
        )
        by_id = dict(zip(biases.column("clip_id").to_pylist(), correction.penalties(biases.column("bias").to_numpy())))
        return np.array([by_id.get(c, 0.0) for c in self.clip_ids], dtype=np.float32)

    def chunk_scenes(self, chunk: str, columns: list[str]) -> pa.Table:
        return pa.concat_tables(
            storage.read_parquet(self.layout.scenes(vlm, chunk), columns=columns) for vlm in self.vlms
        )

    def chunk_texts(self, chunk: str) -> list[str]:
        return concept_texts(self.chunk_scenes(chunk, SCENE_COLUMNS))

    def calibrate(self) -> faiss_index.SearchResult | None:
        """The setting of an approximate index for this run; None for exact search."""
        if isinstance(self.index, faiss.IndexFlat) or not self.searchable():
            return None
        chunks = [
            storage.file_stem(u) for u in storage.list_files(self.layout.vlm_scenes_folder(self.vlms[0]), ".parquet")
        ]
        count = self.retrieval.calibration_queries
        texts = calibration_texts((self.chunk_texts(c) for c in chunks), count)
        if texts:
            queries = embed(self.model, texts, self.clap_config.batch_size)
        else:
            # A run without texts (mappers only) calibrates on its mapped vectors.
            scenes = (self.chunk_scenes(c, SEARCH_COLUMNS) for c in chunks)
            queries = calibration_vectors((mapped_queries(s) for s in scenes), count)
        if not len(queries):
            return None
        target = replace(faiss_index.RecallTarget.from_config(self.retrieval), sample_size=len(queries))
        return faiss_index.search_queries(self.index, queries, self.retrieval.search_k, target, self.allowed)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = []
        for chunk in batch.column("chunk").to_pylist():
            if storage.exists(self.layout.search_stats(chunk)):
                rows.append(searched_chunk(self.layout, chunk))
                continue
            measured = int(chunk) % self.retrieval.recall_every == 0
            scenes = self.chunk_scenes(chunk, SEARCH_COLUMNS)
            matches, stats = self.search(concept_texts(scenes), measured, mapped_queries(scenes))
            storage.write_parquet(self.layout.matches(chunk), matches)
            storage.write_text(self.layout.search_stats(chunk), json.dumps(stats) + "\n")
            rows.append(search_row(self.layout, chunk, stats))
        return search_table(rows)

    def search(self, texts: list[str], measured: bool, mapped: MappedQueries | None = None) -> tuple[pa.Table, dict]:
        """The MATCHES table of `texts` and of the `mapped` concepts, and how they were searched;
        `measured`: with the recall of an approximate search on a sample of them."""
        mapped = mapped if mapped is not None else MappedQueries([], [], np.zeros((0, 0), np.float32))
        stats: dict = {"texts": len(texts), "mapped_queries": len(mapped)}
        queries = len(texts) + len(mapped)
        keys = {
            "text": [*texts, *[None] * len(mapped)],
            "mapper": [*[None] * len(texts), *mapped.mappers],
            "image_id": [*[None] * len(texts), *mapped.image_ids],
        }
        if not queries:
            return MATCHES.empty_table(), stats
        if not self.searchable():
            # No clip is usable: every query has no neighbour, and planning drops its concepts.
            empty = {"clip_ids": [[]] * queries, "scores": [[]] * queries, "corrected": [None] * queries}
            return make_table(MATCHES, keys | empty), stats
        parts = [embed(self.model, texts, self.clap_config.batch_size)] if texts else []
        if len(mapped):
            parts.append(mapped.vectors)
        vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        setting = self.calibration.setting if self.calibration else None
        corrected = None
        if self.penalties is None:
            scores, rows = faiss_index.search_at(self.index, vectors, self.retrieval.search_k, setting, self.allowed)
        else:
            scores, corrected, rows, widest = hubness.corrected_search(
                hubness.index_searcher(self.index, setting, self.allowed),
                self.searchable(),
                vectors,
                self.retrieval.search_k,
                self.penalties,
            )
            stats["hubness_widest_search"] = widest
        if self.calibration:
            # Recall is the index's: of its raw search at this setting, which the correction re-ranks.
            raw_rows = (
                rows
                if corrected is None or not measured
                else faiss_index.search_at(self.index, vectors, self.retrieval.search_k, setting, self.allowed)[1]
            )
            recall, sampled = (
                faiss_index.sample_recall(
                    self.index, vectors, raw_rows, self.retrieval.recall_sample, self.retrieval.recall_k, self.allowed
                )
                if measured
                else (None, 0)
            )
            stats |= {
                "setting": setting,
                "calibration_recall": self.calibration.recall,
                "calibration_queries": self.calibration.sample_size,
                "recall_k": self.calibration.recall_k,
                "recall": recall,
                "recall_queries": sampled,
            }
        found = [r >= 0 for r in rows]
        matches = make_table(
            MATCHES,
            {
                **keys,
                "clip_ids": [self.clip_ids[r[ok]].tolist() for r, ok in zip(rows, found)],
                "scores": [s[ok].astype(np.float32) for s, ok in zip(scores, found)],
                "corrected": (
                    [None] * queries
                    if corrected is None
                    else [c[ok].astype(np.float32) for c, ok in zip(corrected, found)]
                ),
            },
        )
        return matches, stats
