"""The retrieval stage's pieces without Ray or a model: embedding in batches, the calibration texts,
searching at one setting and the recall measured on a chunk's sample."""

import json

import numpy as np
import pyarrow as pa

from pipelines.sonify.matching import search_totals
from schemas import CHUNK_TASKS, SCENES, make_table
from schemas.config import ClapConfig, IndexConfig, RetrievalConfig
from schemas.layout import PoolLayout, SonifyLayout
from stages.io import storage
from stages.search.faiss_index import build_index, exact_search, recall_at_k, sample_recall, search_at
from stages.search.search_stage import RetrieveChunks, calibration_texts, embed, search_table, searched_chunk


class FakeClap:
    """Texts -> fixed unit vectors, recording the size of each batch it was given."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.batches: list[int] = []

    def embed_text(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return np.stack([self.table[t] for t in texts])


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_texts_are_embedded_in_batches_one_row_each_in_order():
    vectors = unit(np.random.default_rng(0).standard_normal((10, 16)))
    texts = [f"text {i}" for i in range(10)]
    model = FakeClap(dict(zip(texts, vectors)))
    assert np.array_equal(embed(model, texts, batch_size=4), vectors)
    assert model.batches == [4, 4, 2]


def test_calibration_texts_come_from_the_first_chunks_evenly_spaced():
    chunks = [[f"a{i:02d}" for i in range(5)], [f"b{i:02d}" for i in range(5)], [f"c{i:02d}" for i in range(50)]]
    assert calibration_texts(iter(chunks), 4) == ["a00", "a01", "a02", "a03"]
    # Ten texts from the first two chunks, eight of them evenly spaced; the third chunk is never read.
    assert calibration_texts(iter(chunks), 8) == ["a00", "a01", "a02", "a03", "b00", "b01", "b02", "b03"]
    assert calibration_texts(iter(chunks[:1]), 100) == chunks[0]
    # A text recurring in several chunks counts once.
    assert calibration_texts(iter([["x", "y"], ["y", "x"], ["z", "a"]]), 3) == ["a", "x", "y"]
    assert calibration_texts(iter([]), 10) == []


def random_ivf(seed: int, vectors: int, queries: int, nlist: int):
    """An IVF index over random unit vectors at nprobe 1, random queries, and their exact top 10."""
    rng = np.random.default_rng(seed)
    index = build_index(unit(rng.standard_normal((vectors, 16))), IndexConfig(kind="ivf", nprobe=1, nlist=nlist))
    query_vectors = unit(rng.standard_normal((queries, 16)))
    return index, query_vectors, exact_search(index, query_vectors, 10)[1]


def test_search_at_a_setting_is_one_call_that_leaves_the_index_alone_and_reaches_exact_at_nlist():
    index, queries, exact_rows = random_ivf(1, 4000, 50, 32)
    _, coarse = search_at(index, queries, 10, 1)
    _, full = search_at(index, queries, 10, 32)
    assert index.nprobe == 1
    assert recall_at_k(full, exact_rows) == 1.0
    assert recall_at_k(coarse, exact_rows) < 1.0


def test_sample_recall_measures_the_given_rows_on_an_even_sample():
    index, queries, exact_rows = random_ivf(2, 3000, 40, 16)
    assert sample_recall(index, queries, exact_rows, 8, 10) == (1.0, 8)
    wrong = exact_rows.copy()
    wrong[::5, :5] = -1  # every fifth query loses half its neighbours: the sample holds queries 0, 5, ..., 35
    recall, sampled = sample_recall(index, queries, wrong, 8, 10)
    assert sampled == 8 and recall == 0.5
    assert sample_recall(index, queries[:0], exact_rows[:0], 8, 10) == (1.0, 0)


def test_the_search_stage_returns_a_row_per_chunk_describing_what_it_wrote(tmp_path):
    layout = SonifyLayout(str(tmp_path / "out"))
    texts = ["a dog barking", "rain on a roof", "wind in trees"]
    vectors = unit(np.random.default_rng(1).standard_normal((3, 16)))
    clips = unit(np.random.default_rng(2).standard_normal((6, 16)))
    chunks = {"000000": texts[:2], "000001": texts[1:]}
    for chunk, chunk_texts in chunks.items():
        concepts = [{"label": t.split()[-1], "text": t} for t in chunk_texts]
        # The columns of a scenes file that retrieval reads.
        scenes = pa.table(
            {
                "image_id": [f"image-{chunk}"],
                "vlm": ["given"],
                "concepts": pa.array([concepts], SCENES.field("concepts").type),
                "dropped": pa.nulls(1, pa.string()),
                "error": pa.nulls(1, pa.string()),
            }
        )
        storage.write_parquet(layout.scenes("given", chunk), scenes)
    stage = RetrieveChunks(
        PoolLayout(str(tmp_path / "pool")),
        layout,
        ["given"],
        ClapConfig(model="unused", batch_size=2),
        RetrievalConfig(search_k=4, recall_every=1),
    )
    # What setup() loads, made here: a text model, an exact index over six clips and its ids.
    stage.model = FakeClap(dict(zip(texts, vectors)))
    stage.index = build_index(clips, IndexConfig(kind="flat"))
    stage.clip_ids = np.array([f"clip-{i}" for i in range(6)], dtype=object)

    rows = stage.process_batch(make_table(CHUNK_TASKS, {"chunk": list(chunks)})).to_pylist()
    assert [r["chunk"] for r in rows] == list(chunks)
    for row, chunk_texts in zip(rows, chunks.values()):
        assert row["matches_url"] == layout.matches(row["chunk"])
        assert storage.read_parquet(row["matches_url"]).column("text").to_pylist() == sorted(chunk_texts)
        assert row["texts"] == 2 == json.loads(storage.read_bytes(layout.search_stats(row["chunk"])))["texts"]
        # Exact search: no setting, nothing measured.
        assert row["setting"] is row["recall"] is row["calibration_queries"] is None

    # A chunk searched before is not searched again: its row is read back from its search stats.
    stage.model = None
    again = stage.process_batch(make_table(CHUNK_TASKS, {"chunk": ["000001"]})).to_pylist()
    assert again == rows[1:] == [searched_chunk(layout, "000001")]


def test_search_totals_add_up_the_rows_of_every_chunk():
    def row(chunk, texts, **approximate):
        none = dict.fromkeys(
            ["setting", "calibration_recall", "calibration_queries", "recall_k", "recall", "hubness_widest_search"]
        )
        return {
            "chunk": chunk,
            "matches_url": f"m/{chunk}",
            "texts": texts,
            "mapped_queries": 2,
            **none,
            "recall_queries": None,
        } | approximate

    measured = {"setting": 16, "calibration_recall": 0.96, "calibration_queries": 50, "recall_k": 10}
    rows = [
        row("000000", 40, **measured, recall=0.9, recall_queries=10),
        row("000001", 30, **measured, recall=None, recall_queries=0),
        row("000002", 30, **(measured | {"calibration_recall": 0.97}), recall=0.5, recall_queries=30),
    ]
    totals = search_totals(search_table(rows), "ivf")
    assert totals == {
        "texts_searched": 100,
        "mapped_searched": 6,
        "index_kind": "ivf",
        "exact": False,
        "settings": [16],
        "recall_k": 10,
        "recall": (0.9 * 10 + 0.5 * 30) / 40,
        "recall_queries": 40,
        "calibration_recall": 0.96,
        "calibration_queries": 50,
    }
    assert search_totals(search_table([row("000000", 7)]), "flat") == {
        "texts_searched": 7,
        "mapped_searched": 2,
        "index_kind": "flat",
        "exact": True,
    }
    # With the hubness correction on, the widest raw search of any chunk.
    widened = [row("000000", 7, hubness_widest_search=32), row("000001", 5, hubness_widest_search=64)]
    assert search_totals(search_table(widened), "flat")["hubness_widest_search"] == 64
