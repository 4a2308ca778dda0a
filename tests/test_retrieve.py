"""The retrieval stage's pieces without Ray or a model: embedding in batches, the calibration texts,
searching at one setting and the recall measured on a chunk's sample."""

import numpy as np

from schemas.config import IndexConfig
from stages.search.faiss_index import build_index, exact_search, recall_at_k, sample_recall, search_at
from stages.search.search_stage import calibration_texts, embed


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
