import numpy as np

from schemas.config import IndexConfig
from stages.index import RecallTarget, build_index, search_queries
from stages.retrieve import embed_and_search


class FakeClap:
    """Texts -> fixed unit vectors, recording the size of each batch it was given."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.batches: list[int] = []

    def embed_text(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return np.stack([self.table[t] for t in texts])


def test_texts_are_embedded_in_batches_and_searched_in_one_call():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"text {i}" for i in range(10)]
    model = FakeClap({t: vectors[i * 7] for i, t in enumerate(texts)})
    index = build_index(vectors, IndexConfig(kind="ivf", nprobe=1))
    recall = RecallTarget(target=0.95, recall_k=5, sample_size=4)

    result = embed_and_search(model, index, texts, batch_size=4, search_k=5, recall=recall)
    assert model.batches == [4, 4, 2]
    # One search over all the texts: the recall sample is drawn from all ten.
    expected = search_queries(index, np.stack([model.table[t] for t in texts]), 5, recall)
    assert np.array_equal(result.rows, expected.rows) and result.setting == expected.setting
    assert result.sample_size == 4
    assert result.rows[:, 0].tolist() == [i * 7 for i in range(10)]


def test_no_texts_give_no_rows():
    index = build_index(np.eye(4, dtype=np.float32), IndexConfig(kind="flat"))
    result = embed_and_search(FakeClap({}), index, [], batch_size=4, search_k=3, recall=RecallTarget(0.95, 10, 32))
    assert result.rows.shape == (0, 3)
