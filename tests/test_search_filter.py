"""Searches limited to the clips a mix may use (mix_clips.parquet: audible at the mix rate, allowed
by sonify.licenses): the index's own search, exact search, calibration, the recall measured and the
hubness re-rank return the best allowed rows, however many better rows are left out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from schemas import CHUNK_TASKS, MIX_CLIPS, SCENES, make_table
from schemas.config import ClapConfig, IndexConfig, RetrievalConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.io import storage
from stages.search import hubness
from stages.search.faiss_index import (
    AllowedRows,
    RecallTarget,
    build_index,
    exact_search,
    flat_subset,
    recall_at_k,
    sample_recall,
    search_at,
    search_queries,
)
from stages.search.search_stage import RetrieveChunks
from tests.test_retrieve import FakeClap, unit

CLIPS, DIM, K = 3000, 16, 10


def brute_top_k(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """The rows of the k best allowed vectors of each query, by numpy alone."""
    scores = queries @ vectors.T
    scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    vectors = unit(rng.standard_normal((CLIPS, DIM)))
    queries = unit(rng.standard_normal((40, DIM)))
    # Every query's own best clips are left out: the allowed answer lies past the unfiltered top-K.
    mask = rng.random(CLIPS) < 0.5
    mask[brute_top_k(vectors, queries, np.ones(CLIPS, bool), K).ravel()] = False
    return vectors, queries, mask


def test_every_row_allowed_is_no_filter_at_all():
    assert AllowedRows.of(np.ones(5, bool)) is None
    assert AllowedRows.of(np.array([True, False, True])).count == 2


def test_a_flat_subset_holds_the_allowed_rows_in_order(data):
    vectors, queries, mask = data
    index = build_index(vectors, IndexConfig(kind="flat"))
    subset = flat_subset(index, AllowedRows.of(mask))
    assert subset.ntotal == mask.sum()
    _, rows = subset.search(queries, K)
    assert np.array_equal(np.flatnonzero(mask)[rows], brute_top_k(vectors, queries, mask, K))


@pytest.mark.parametrize(("kind", "setting"), [("flat", None), ("ivf", 32), ("hnsw", 4096)])
def test_a_limited_search_returns_the_best_allowed_rows(data, kind, setting):
    vectors, queries, mask = data
    index = build_index(vectors, IndexConfig(kind=kind, nlist=32, nprobe=1))
    allowed = AllowedRows.of(mask)
    expected = brute_top_k(vectors, queries, mask, K)
    _, rows = search_at(index, queries, K, setting, allowed)
    assert mask[rows].all()
    assert recall_at_k(rows, expected) == 1.0
    _, exact_rows = exact_search(index, queries, K, allowed)
    assert np.array_equal(exact_rows, expected)
    assert sample_recall(index, queries, rows, 8, K, allowed) == (1.0, 8)
    # Unfiltered, the same search finds none of these rows: they lie past its top-K.
    _, unfiltered = search_at(index, queries, K, setting)
    assert not mask[unfiltered].any()


def test_calibration_measures_recall_against_the_allowed_rows(data):
    vectors, queries, mask = data
    index = build_index(vectors, IndexConfig(kind="ivf", nlist=32, nprobe=1))
    allowed = AllowedRows.of(mask)
    result = search_queries(index, queries, K, RecallTarget(0.95, K, 20), allowed)
    assert mask[result.rows[result.rows >= 0]].all()
    assert result.recall >= 0.95
    assert recall_at_k(result.rows, brute_top_k(vectors, queries, mask, K)) >= 0.9


def test_the_hubness_re_rank_keeps_to_the_allowed_rows(data):
    vectors, queries, mask = data
    index = build_index(vectors, IndexConfig(kind="flat"))
    allowed = AllowedRows.of(mask)
    penalties = np.random.default_rng(3).uniform(0, 0.3, CLIPS).astype(np.float32)
    raw, corrected, rows, _ = hubness.corrected_search(
        hubness.index_searcher(index, None, allowed), allowed.count, queries, K, penalties
    )
    scores = queries @ vectors.T - penalties
    scores[:, ~mask] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    assert mask[rows].all()
    assert np.allclose(np.sort(corrected, axis=1), np.sort(np.take_along_axis(scores, expected, axis=1), axis=1))


def retrieval_stage(tmp_path, usable: list[str], kind: str = "flat") -> tuple[RetrieveChunks, list[str]]:
    layout = SonifyLayout(str(tmp_path / "out"))
    texts = ["a dog barking", "rain on a roof"]
    concepts = [{"label": "x", "text": t} for t in texts]
    scenes = pa.table(
        {
            "image_id": ["an image"],
            "vlm": ["given"],
            "concepts": pa.array([concepts], SCENES.field("concepts").type),
            "dropped": pa.nulls(1, pa.string()),
            "error": pa.nulls(1, pa.string()),
        }
    )
    storage.write_parquet(layout.scenes("given", "000000"), scenes)
    rows = {name: [None] * len(usable) for name in MIX_CLIPS.names}
    rows |= {"clip_id": usable, "recording": usable, "lufs": [-20.0] * len(usable), "part": ["p"] * len(usable)}
    rows |= {"audio_offset": [0] * len(usable), "audio_bytes": [1] * len(usable), "generated": [False] * len(usable)}
    storage.write_parquet(layout.mix_clips(), make_table(MIX_CLIPS, rows))
    stage = RetrieveChunks(
        PoolLayout(str(tmp_path / "pool")),
        layout,
        ["given"],
        ClapConfig(model="unused", batch_size=2),
        RetrievalConfig(search_k=3, recall_every=1),
    )
    # What setup() loads, made here: a text model, an index over eight clips and its ids.
    stage.model = FakeClap(dict(zip(texts, unit(np.random.default_rng(4).standard_normal((2, DIM))))))
    stage.index = build_index(clip_vectors(), IndexConfig(kind=kind))
    stage.clip_ids = np.array([f"clip-{i}" for i in range(8)], dtype=object)
    stage.limit_to_usable_clips()
    return stage, texts


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_search_stage_searches_only_the_clips_of_mix_clips(tmp_path, kind):
    usable = ["clip-1", "clip-4", "clip-6", "clip-7"]
    stage, texts = retrieval_stage(tmp_path, usable, kind)
    # An exact index is replaced by one of the usable clips; an approximate one keeps every clip.
    assert stage.index.ntotal == (len(usable) if kind == "flat" else 8)
    assert (stage.allowed is None) == (kind == "flat")
    [row] = stage.process_batch(make_table(CHUNK_TASKS, {"chunk": ["000000"]})).to_pylist()
    matches = storage.read_parquet(row["matches_url"]).to_pylist()
    assert [m["text"] for m in matches] == sorted(texts)
    vectors = {f"clip-{i}": v for i, v in enumerate(clip_vectors())}
    for match in matches:
        assert len(match["clip_ids"]) == 3 and set(match["clip_ids"]) <= set(usable)
        query = stage.model.table[match["text"]]
        best = sorted(usable, key=lambda c: -float(vectors[c] @ query))[:3]
        assert match["clip_ids"] == best


def clip_vectors() -> np.ndarray:
    """The eight clips of the retrieval stage's index."""
    return unit(np.random.default_rng(5).standard_normal((8, DIM)))


def test_with_no_usable_clip_every_text_has_no_neighbour(tmp_path):
    stage, texts = retrieval_stage(tmp_path, [])
    [row] = stage.process_batch(make_table(CHUNK_TASKS, {"chunk": ["000000"]})).to_pylist()
    matches = storage.read_parquet(row["matches_url"]).to_pylist()
    assert [(m["text"], m["clip_ids"], m["scores"]) for m in matches] == [(t, [], []) for t in sorted(texts)]
