"""The hubness correction with numpy and FAISS alone (no Ray, no model): the bank, the clips' biases
and k-occurrence against brute force, a pool extended, the penalty rule, the certified corrected
search, `hubness: none` against an independent statement of the paper's choice, the cap, and the
exposure numbers."""

from __future__ import annotations

import hashlib
from collections import Counter

import faiss
import numpy as np
import pytest
import scipy.stats

from schemas.config import IndexConfig
from stages.report.sonify import exposure
from stages.search import faiss_index, hubness
from stages.search.choice import ConceptChoice, DroppedConcept, choose_clips


def unit_rows(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_biases(pool: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    scores = pool.astype(np.float64) @ bank.T.astype(np.float64)
    return np.sort(scores, axis=1)[:, -k:].mean(axis=1)


def brute_k_occurrence(pool: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    nearest = np.argsort(-(bank.astype(np.float64) @ pool.T.astype(np.float64)), axis=1)[:, :k]
    return np.bincount(nearest.ravel(), minlength=len(pool))


def test_the_bank_is_evenly_spaced_and_depends_only_on_the_count():
    assert hubness.bank_rows(10, 4).tolist() == [0, 2, 5, 7]
    assert hubness.bank_rows(3, 8).tolist() == [0, 1, 2]
    assert hubness.bank_rows(1000, 16).tolist() == hubness.bank_rows(1000, 16).tolist()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_biases_and_k_occurrence_match_brute_force_in_small_blocks(monkeypatch, kind):
    rng = np.random.default_rng(1)
    pool, bank = unit_rows(rng, 400), unit_rows(rng, 37)
    monkeypatch.setattr(hubness, "BIAS_BLOCK_SCORES", 37 * 13)
    index = faiss_index.build_index(pool, IndexConfig(kind=kind, nlist=4))
    neighbours = hubness.BankNeighbours.empty(len(bank), 5)
    rows, biases = hubness.pool_biases(index, bank, 5, neighbours)
    by_row = np.full(len(pool), np.nan)
    by_row[rows] = biases
    assert np.allclose(by_row, brute_biases(pool, bank, 5), atol=1e-5)
    assert neighbours.k_occurrence(len(pool)).tolist() == brute_k_occurrence(pool, bank, 5).tolist()


def test_a_pool_extended_needs_the_new_clips_only():
    rng = np.random.default_rng(2)
    pool, bank = unit_rows(rng, 300), unit_rows(rng, 20)
    index = faiss_index.build_index(pool[:200], IndexConfig(kind="flat"))
    first = hubness.BankNeighbours.empty(len(bank), 4)
    old_rows, old_biases = hubness.pool_biases(index, bank, 4, first)
    faiss_index.add_to_index(index, pool[200:])
    stored = hubness.BankNeighbours.restore(first.rows.tolist(), first.scores.tolist(), 4)
    wanted = np.arange(300) >= 200
    new_rows, new_biases = hubness.pool_biases(index, bank, 4, stored, wanted)
    assert sorted(new_rows.tolist()) == list(range(200, 300))
    by_row = np.zeros(300)
    by_row[old_rows], by_row[new_rows] = old_biases, new_biases
    assert np.allclose(by_row, brute_biases(pool, bank, 4), atol=1e-5)
    assert stored.k_occurrence(300).tolist() == brute_k_occurrence(pool, bank, 4).tolist()


def test_skewness_is_the_sample_skewness():
    values = np.random.default_rng(3).exponential(size=500)
    assert hubness.skewness(values) == pytest.approx(scipy.stats.skew(values))
    assert hubness.skewness(np.ones(10)) == 0.0


def test_only_clips_whose_bias_stands_out_pay_and_by_their_excess():
    biases = np.concatenate([np.linspace(0.40, 0.50, 101), [0.70, 0.90]])
    correction = hubness.Correction.of_pool(biases, alpha=2.0, outlier_z=2.0)
    assert correction.centre == pytest.approx(np.median(biases))
    assert correction.spread == pytest.approx(1.4826 * np.median(np.abs(biases - np.median(biases))))
    start = correction.centre + 2.0 * correction.spread
    penalties = correction.penalties(biases)
    assert np.all(penalties[biases <= start] == 0)
    assert penalties[-2:] == pytest.approx(2.0 * (biases[-2:] - start))
    assert hubness.Correction.of_pool(biases, 0.0, 2.0).penalties(biases).max() == 0


def brute_corrected(pool, queries, penalties, k):
    corrected = queries.astype(np.float64) @ pool.T.astype(np.float64) - penalties
    return np.argsort(-corrected, axis=1, kind="stable")[:, :k], corrected


def test_corrected_search_is_the_exact_top_k_of_the_corrected_scores_and_widens_for_it():
    rng = np.random.default_rng(4)
    pool, queries = unit_rows(rng, 500), unit_rows(rng, 30)
    # Every query's 40 best clips pay heavily: the top 2k of the raw search cannot certify them.
    raw_top = np.argsort(-(queries @ pool.T), axis=1)[:, :40]
    penalties = np.zeros(500, np.float32)
    penalties[np.unique(raw_top)] = 0.5
    index = faiss_index.build_index(pool, IndexConfig(kind="flat"))
    raw, corrected, rows, widest = hubness.corrected_search(
        hubness.index_searcher(index, None), index.ntotal, queries, 8, penalties
    )
    expected, scores = brute_corrected(pool, queries, penalties, 8)
    assert widest > 16
    assert np.allclose(corrected, np.take_along_axis(scores, rows, axis=1), atol=1e-5)
    assert np.allclose(np.take_along_axis(scores, expected, axis=1), corrected, atol=1e-5)
    assert np.allclose(raw, np.take_along_axis(queries @ pool.T, rows, axis=1), atol=1e-5)
    assert np.all(np.diff(corrected, axis=1) <= 1e-7)


def test_without_penalties_the_corrected_search_is_the_raw_search():
    rng = np.random.default_rng(5)
    pool, queries = unit_rows(rng, 200), unit_rows(rng, 20)
    index = faiss.IndexFlatIP(16)
    index.add(pool)
    raw, corrected, rows, _ = hubness.corrected_search(
        hubness.index_searcher(index, None), 200, queries, 10, np.zeros(200, np.float32)
    )
    expected_scores, expected_rows = index.search(queries, 10)
    assert rows.tolist() == expected_rows.tolist()
    assert np.array_equal(raw, expected_scores) and np.array_equal(corrected, expected_scores)


def test_a_pool_smaller_than_k_leaves_rows_empty():
    rng = np.random.default_rng(6)
    pool, queries = unit_rows(rng, 3), unit_rows(rng, 2)
    index = faiss_index.build_index(pool, IndexConfig(kind="flat"))
    raw, _, rows, _ = hubness.corrected_search(hubness.index_searcher(index, None), 3, queries, 5, np.zeros(3))
    assert (rows[:, :3] >= 0).all() and (rows[:, 3:] == -1).all() and np.isnan(raw[:, 3:]).all()


def paper_choice(scores, k, seed, key, position):
    """The paper's Algorithm 1 as DESIGN.md states it, written apart from the pipeline's code."""
    r = np.sign(scores) * np.sqrt(np.abs(scores))
    tau = r[: min(k, len(r))].mean()
    if tau <= 0:
        return 0
    members = [i for i in range(min(k, len(r))) if r[i] >= tau or np.isclose(r[i], tau, rtol=1e-9, atol=0)]
    if len(members) == 1:
        return members[0]
    digest = hashlib.sha256(f"{seed}\0{key}\0{position}\0retrieval".encode()).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    p = r[members] / r[members].sum()
    return int(rng.choice(np.array(members), p=p))


@pytest.mark.parametrize("seed", range(5))
def test_hubness_none_is_the_papers_choice_exactly(seed):
    rng = np.random.default_rng(seed)
    for case in range(40):
        n = int(rng.integers(1, 20))
        scores = np.sort(rng.uniform(-0.2, 0.8, n))[::-1]
        ids = [f"c{i}" for i in rng.permutation(40)[:n]]
        (choice,) = choose_clips(["t"], {"t": (ids, scores)}, seed, f"k{case}", 4, True, -1.0, set(ids))
        pick = paper_choice(scores, 4, seed, f"k{case}", 0)
        assert choice.clip_id == ids[pick]
        assert choice.cosine == scores[pick] and choice.corrected == scores[pick]
        assert choice.ssr == np.sign(scores[pick]) * np.sqrt(abs(scores[pick]))


def test_the_threshold_runs_on_corrected_scores_and_the_floor_on_raw_cosines():
    ids = ["hub", "a", "b", "c"]
    raw = np.array([0.60, 0.50, 0.49, 0.30])
    corrected = {"t": np.array([0.50, 0.50, 0.40, 0.30])}
    # On raw cosines the threshold of the top 2 keeps the hub alone; corrected, "a" ties with it.
    assert {choose_clips(["t"], {"t": (ids, raw)}, s, "key", 2, True, 0.0, set(ids))[0].clip_id for s in range(50)} == {
        "hub"
    }
    picks = Counter()
    for seed in range(200):
        (choice,) = choose_clips(["t"], {"t": (ids, raw)}, seed, "key", 2, True, 0.0, set(ids), corrected=corrected)
        picks[choice.clip_id] += 1
        assert choice.cosine == raw[ids.index(choice.clip_id)]
        assert choice.corrected == corrected["t"][ids.index(choice.clip_id)]
    assert set(picks) == {"hub", "a"}
    # The floor removes by raw cosine: "hub" stays (0.60), the rest go.
    for seed in range(20):
        (choice,) = choose_clips(["t"], {"t": (ids, raw)}, seed, "k", 2, True, 0.55, set(ids), corrected=corrected)
        assert choice.clip_id == "hub"


def test_the_cap_bounds_uses_over_samples_and_drops_what_it_must():
    ids = ["a", "b", "c"]
    matches = {"t": (ids, np.array([0.9, 0.5, 0.1]))}
    uses: Counter = Counter()
    choices = [
        choose_clips(["t"], matches, 0, f"s{i}", 3, True, -1.0, set(ids), uses=uses, max_uses=2)[0] for i in range(7)
    ]
    assert Counter(c.clip_id for c in choices if isinstance(c, ConceptChoice)) == {"a": 2, "b": 2, "c": 2}
    assert choices[6] == DroppedConcept("clip_cap", 0.9)
    assert uses == {"a": 2, "b": 2, "c": 2}


def test_a_cap_never_reached_changes_no_choice():
    rng = np.random.default_rng(8)
    ids = [f"c{i}" for i in range(16)]
    for case in range(30):
        matches = {"t": (ids, np.sort(rng.uniform(0.2, 0.6, 16))[::-1])}
        plain = choose_clips(["t"], matches, 1, f"k{case}", 8, True, 0.0, set(ids))
        capped = choose_clips(["t"], matches, 1, f"k{case}", 8, True, 0.0, set(ids), uses=Counter(), max_uses=5)
        assert plain == capped


def test_exposure_numbers_against_an_independent_computation():
    uses = Counter({f"c{i}": n for i, n in enumerate([1, 1, 2, 3, 5, 8, 13, 40] + [1] * 30)})
    pool = 100
    numbers = exposure(uses, pool, 4.5)
    counts = np.array(list(uses.values()) + [0] * (pool - len(uses)), dtype=float)
    # Gini as the mean absolute difference over twice the mean.
    gini = np.abs(counts[:, None] - counts[None, :]).sum() / (2 * pool**2 * counts.mean())
    assert numbers["distinct_clips"] == 38 and numbers["uses"] == int(counts.sum())
    assert numbers["max_uses_of_one_clip"] == 40
    assert numbers["top_clips_share"] == pytest.approx(np.sort(counts)[-20:].sum() / counts.sum(), abs=1e-6)
    assert numbers["gini"] == pytest.approx(gini, abs=1e-6)
    assert numbers["pool_k_occurrence_skewness"] == 4.5
    assert exposure(Counter(), pool, None)["distinct_clips"] == 0
