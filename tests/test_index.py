import faiss
import numpy as np
import pytest

from schemas.config import IndexConfig
from stages.search.faiss_index import (
    RecallTarget,
    add_to_index,
    build_index,
    deserialize,
    exact_search,
    index_kind,
    ivf_cells,
    recall_at_k,
    sample_rows,
    search,
    search_queries,
    serialize,
    training_sample,
)

DIM = 64
TARGET = RecallTarget(target=0.95, recall_k=10, sample_size=32)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def centers(count: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM))


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    middle = centers()
    return unit(middle[rng.integers(0, len(middle), n)] + 0.3 * rng.standard_normal((n, DIM)))


def across_a_gap(n: int, seed: int = 2) -> np.ndarray:
    """Queries near the clusters' centres, all shifted by one vector, as text queries sit across
    the modality gap from audio: close to their own cluster, but not among its points."""
    rng = np.random.default_rng(seed)
    middle = centers()
    gap = 2.0 * rng.standard_normal(DIM) / np.sqrt(DIM) * np.linalg.norm(middle[0])
    return unit(middle[rng.integers(0, len(middle), n)] + gap + 1.0 * rng.standard_normal((n, DIM)))


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def test_flat_search_is_exact_and_measures_nothing():
    vectors, queries = clustered(2000), across_a_gap(50)
    result = search_queries(build_index(vectors, IndexConfig(kind="flat")), queries, 5, TARGET)
    scores, rows = exact_top(vectors, queries, 5)
    assert np.array_equal(result.rows, rows)
    assert np.allclose(result.scores, scores, atol=1e-5)
    assert result.setting is None and result.recall is None and result.sample_size == 0


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_exact_search_over_the_index_memory_equals_brute_force(kind):
    vectors, queries = clustered(3000), across_a_gap(40)
    index = build_index(vectors, IndexConfig(kind=kind, nprobe=1, hnsw_m=4, ef_search=8))
    scores, rows = exact_search(index, queries, 7)
    expected_scores, expected_rows = exact_top(vectors, queries, 7)
    assert np.array_equal(rows, expected_rows)
    assert np.allclose(scores, expected_scores, atol=1e-5)
    assert exact_search(index, queries[:0], 7)[1].shape == (0, 7)
    assert exact_search(build_index(vectors[:5], IndexConfig(kind=kind)), queries, 7)[1].shape == (40, 5)


def test_exact_search_is_the_same_on_any_number_of_threads():
    vectors, queries = clustered(3000), across_a_gap(40)
    index = build_index(vectors, IndexConfig(kind="ivf"))
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = exact_search(index, queries, 7)
        faiss.omp_set_num_threads(3)
        three = exact_search(index, queries, 7)
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(one[1], three[1]) and np.array_equal(one[0], three[0])


def test_auto_is_exact_below_exact_below_and_ivf_from_it():
    vectors = clustered(3000)
    config = IndexConfig(exact_below=2000)
    assert isinstance(build_index(vectors[:1999], config), faiss.IndexFlatIP)
    assert isinstance(build_index(vectors[:2000], config), faiss.IndexIVFFlat)
    assert [index_kind(config, n) for n in (0, 1999, 2000)] == ["flat", "flat", "ivf"]
    assert index_kind(IndexConfig(kind="hnsw", exact_below=2000), 10) == "hnsw"
    assert index_kind(IndexConfig(kind="flat", exact_below=2000), 10**6) == "flat"


def test_ivf_trains_on_a_bounded_seeded_sample():
    vectors = clustered(10_000)
    sample = training_sample(vectors, cells=10, seed=3)
    assert len(sample) == 640
    assert np.array_equal(sample, training_sample(vectors, cells=10, seed=3))
    assert not np.array_equal(sample, training_sample(vectors, cells=10, seed=4))
    # Rows of the pool, each once.
    assert len({row.tobytes() for row in sample}) == 640 and {row.tobytes() for row in sample} <= {
        v.tobytes() for v in vectors
    }
    assert len(training_sample(vectors, cells=1000, seed=3)) == len(vectors)


def ladder_from(start: int, end: int) -> list[int]:
    rungs = [start]
    while rungs[-1] < end:
        rungs.append(min(2 * rungs[-1], end))
    return rungs


def sample_recall(index: faiss.Index, params, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    sample = queries[sample_rows(len(queries), TARGET.sample_size)]
    _, found = index.search(sample, k, params=params)
    return recall_at_k(found[:, : TARGET.recall_k], exact_top(vectors, sample, TARGET.recall_k)[1])


def test_ivf_search_takes_the_smallest_nprobe_that_reaches_the_target():
    vectors, queries = clustered(5000), across_a_gap(300)
    index = build_index(vectors, IndexConfig(kind="ivf", nprobe=1))
    result = search_queries(index, queries, 20, TARGET)

    rungs = ladder_from(1, index.nlist)
    assert result.setting in rungs and result.setting > 1, "the gap should make the first rung miss"
    assert result.recall >= TARGET.target and result.sample_size == TARGET.sample_size
    # The reported recall is what the setting gives against brute force, and the rung below misses.
    at = sample_recall(index, faiss.SearchParametersIVF(nprobe=result.setting), vectors, queries, 20)
    assert result.recall == pytest.approx(at)
    below = rungs[rungs.index(result.setting) - 1]
    assert sample_recall(index, faiss.SearchParametersIVF(nprobe=below), vectors, queries, 20) < TARGET.target
    # Every query was searched at that setting.
    _, rows = index.search(queries, 20, params=faiss.SearchParametersIVF(nprobe=result.setting))
    assert np.array_equal(result.rows, rows)


def test_hnsw_search_reaches_the_target():
    vectors, queries = clustered(5000), across_a_gap(300)
    index = build_index(vectors, IndexConfig(kind="hnsw", hnsw_m=4, ef_search=8))
    result = search_queries(index, queries, 10, TARGET)
    assert result.recall >= TARGET.target and result.setting in ladder_from(8, 5000)
    assert sample_recall(
        index, faiss.SearchParametersHNSW(efSearch=result.setting), vectors, queries, 10
    ) == pytest.approx(result.recall)


def test_a_target_of_one_on_ivf_ends_at_exact_search():
    vectors, queries = clustered(5000), across_a_gap(100)
    index = build_index(vectors, IndexConfig(kind="ivf", nprobe=1))
    result = search_queries(index, queries, 10, RecallTarget(target=1.0, recall_k=10, sample_size=100))
    assert result.recall == 1.0
    assert all(set(a) == set(e) for a, e in zip(result.rows, exact_top(vectors, queries, 10)[1]))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_search_is_deterministic_and_leaves_the_index_settings_alone(kind):
    vectors, queries = clustered(5000), across_a_gap(200)
    index = build_index(vectors, IndexConfig(kind=kind, nprobe=1, ef_search=8))
    first = search_queries(index, queries, 10, TARGET)
    second = search_queries(index, queries, 10, TARGET)
    assert np.array_equal(first.rows, second.rows) and np.array_equal(first.scores, second.scores)
    assert (first.setting, first.recall) == (second.setting, second.recall)
    if kind == "ivf":
        assert first.setting > 1 and index.nprobe == 1
    else:
        assert first.setting > 8 and index.hnsw.efSearch == 8


def test_recall_is_measured_at_most_at_the_index_size():
    vectors = clustered(9)
    result = search_queries(build_index(vectors, IndexConfig(kind="hnsw")), across_a_gap(4), 64, TARGET)
    assert result.recall_k == 9 and result.recall == 1.0 and result.sample_size == 4


def test_the_sample_is_evenly_spread_and_depends_only_on_the_count():
    assert sample_rows(100, 4).tolist() == [0, 25, 50, 75]
    assert sample_rows(3, 32).tolist() == [0, 1, 2]
    assert sample_rows(0, 32).tolist() == []


def test_recall_measures_overlap():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[1, 2, 9, 9], [5, 6, 7, 8]]), exact) == pytest.approx(0.75)
    assert recall_at_k(np.array([[-1, -1, -1, -1], [8, 7, 6, 5]]), exact) == pytest.approx(0.5)


def test_ivf_cells_bounded_by_training_points():
    assert ivf_cells(10, None) == 1
    assert ivf_cells(100_000, None) == int(4 * np.sqrt(100_000))
    assert ivf_cells(1000, 500) == 1000 // 39


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_grow_and_serialize(kind):
    vectors = clustered(3000)
    config = IndexConfig(kind=kind, nprobe=64)
    index = build_index(vectors[:2000], config)
    add_to_index(index, vectors[2000:])
    restored = deserialize(serialize(index))
    assert restored.ntotal == 3000
    _, rows = search(restored, vectors[2500:2510], 1)
    assert rows[:, 0].tolist() == list(range(2500, 2510))
