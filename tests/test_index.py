import numpy as np
import pytest

from schemas.config import IndexConfig
from stages.index import add_to_index, build_index, deserialize, ivf_cells, measure_recall, recall_at_k, search, serialize


def clustered(n: int, dim: int = 64, centers: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dim))
    vectors = middle[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_flat_index_equals_brute_force():
    vectors = clustered(2000)
    queries = clustered(50, seed=1)
    scores, rows = search(build_index(vectors, IndexConfig(kind="flat")), queries, 5)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1)[:, :5]
    assert np.array_equal(rows, expected)
    assert np.allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize("kind, floor", [("ivf", 0.9), ("hnsw", 0.9)])
def test_approximate_indexes_have_high_recall(kind, floor):
    vectors = clustered(5000)
    config = IndexConfig(kind=kind, nprobe=8, recall_queries=200)
    index = build_index(vectors, config)
    recall = measure_recall(index, vectors, config, seed=0)
    assert floor <= recall <= 1.0


def test_recall_measures_overlap():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[1, 2, 9, 9], [5, 6, 7, 8]]), exact) == pytest.approx(0.75)
    assert recall_at_k(np.array([[-1, -1, -1, -1], [8, 7, 6, 5]]), exact) == pytest.approx(0.5)


def test_badly_tuned_ivf_reports_low_recall():
    # Unclustered vectors and one probed cell of 100: most true neighbours sit in other cells.
    vectors = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = IndexConfig(kind="ivf", nlist=100, nprobe=1, recall_queries=200)
    assert measure_recall(build_index(vectors, config), vectors, config, seed=0) < 0.9


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
