"""Signed square root, dynamic threshold, candidate-set bounds, sampling frequencies, hubs."""

import numpy as np
import pytest

from stages.search.choice import (
    ConceptChoice,
    DroppedConcept,
    candidate_set,
    choose,
    choose_clips,
    concept_rng,
    signed_sqrt,
)


def test_signed_sqrt():
    assert np.allclose(signed_sqrt(np.array([0.64, 0.25, 0.0, -0.09])), [0.8, 0.5, 0.0, -0.3])


def test_threshold_is_mean_of_top_k_and_set_is_bounded():
    scores = np.array([0.81, 0.64, 0.49, 0.36, 0.25, 0.16])
    c = candidate_set(scores, k=4)
    assert c.threshold == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.6]))
    assert c.members.tolist() == [0, 1]
    assert c.probabilities == pytest.approx(np.array([0.9, 0.8]) / 1.7)
    assert not c.fallback


@pytest.mark.parametrize("seed", range(20))
def test_candidate_set_size_between_1_and_k(seed):
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.uniform(0.01, 1.0, 64))[::-1]
    k = int(rng.integers(1, 64))
    c = candidate_set(scores, k)
    assert 1 <= c.members.size <= k
    assert np.all(c.members < k)
    assert np.all(c.weights[c.members] >= c.threshold)
    assert c.probabilities.sum() == pytest.approx(1.0)


def test_flat_top_gives_large_set_and_peaked_top_gives_small_set():
    flat = candidate_set(np.array([0.50, 0.50, 0.49, 0.49, 0.48, 0.48, 0.47, 0.47]), k=8)
    peaked = candidate_set(np.array([0.90, 0.30, 0.29, 0.28, 0.27, 0.26, 0.25, 0.24]), k=8)
    assert flat.members.size >= 4
    assert peaked.members.size == 1


def test_non_positive_threshold_falls_back_to_top_1():
    c = candidate_set(np.array([0.01, -0.2, -0.3]), k=3)
    assert c.fallback and c.members.tolist() == [0]
    assert choose(c, concept_rng(0, "x", 0)) == 0


def test_ssr_off_uses_raw_cosine():
    c = candidate_set(np.array([0.81, 0.64, 0.49]), k=3, use_ssr=False)
    assert c.threshold == pytest.approx((0.81 + 0.64 + 0.49) / 3)


def test_unsorted_or_empty_scores_are_rejected():
    with pytest.raises(ValueError, match="sorted"):
        candidate_set(np.array([0.1, 0.5]), k=2)
    with pytest.raises(ValueError, match="no scores"):
        candidate_set(np.array([]), k=2)


def test_rng_is_stable_and_separates_streams():
    a = concept_rng(7, "img-1", 0).random(3)
    assert np.array_equal(a, concept_rng(7, "img-1", 0).random(3))
    assert not np.array_equal(a, concept_rng(7, "img-1", 1).random(3))
    assert not np.array_equal(a, concept_rng(8, "img-1", 0).random(3))
    assert not np.array_equal(a, concept_rng(7, "img-2", 0).random(3))
    assert not np.array_equal(a, concept_rng(7, "img-1", 0, purpose="loudness").random(3))


def test_empirical_choice_frequencies_match_p():
    scores = np.array([0.64, 0.60, 0.58, 0.55, 0.30, 0.20, 0.10, 0.05])
    c = candidate_set(scores, k=6)
    draws = 20000
    counts = np.zeros(scores.size)
    for i in range(draws):
        counts[choose(c, concept_rng(0, f"sample-{i}", 0))] += 1
    expected = np.zeros(scores.size)
    expected[c.members] = c.probabilities * draws
    # Pearson chi-square over the candidate set; 99.9% quantile for <= 5 degrees of freedom is < 20.6
    chi2 = float(np.sum((counts[c.members] - expected[c.members]) ** 2 / expected[c.members]))
    assert chi2 < 20.6
    assert counts[np.setdiff1d(np.arange(scores.size), c.members)].sum() == 0


def test_ssr_spreads_choices_away_from_a_hub():
    """A hub clip (matches everything a little better) among many good matches: SSR flattens the top,
    so over many queries more distinct clips get chosen than with raw cosine at the same k."""
    rng = np.random.default_rng(0)
    k, queries = 8, 400
    chosen = {True: set(), False: set()}
    hub_wins = {True: 0, False: 0}
    for q in range(queries):
        clips = rng.choice(np.arange(1, 200), size=15, replace=False)
        scores = np.sort(rng.uniform(0.02, 0.12, 15))[::-1]
        ids = np.concatenate([[0], clips])  # clip 0 is the hub
        all_scores = np.concatenate([[0.36], scores])
        for use_ssr in (True, False):
            c = candidate_set(all_scores, k, use_ssr)
            pick = int(ids[choose(c, concept_rng(0, f"q{q}", 0))])
            chosen[use_ssr].add(pick)
            hub_wins[use_ssr] += pick == 0
    assert len(chosen[True]) > len(chosen[False])
    assert hub_wins[True] < hub_wins[False]


def test_tied_scores_keep_every_tie_and_the_top_score():
    # Byte-identical pool files give exactly equal scores, and the float mean of equal values can
    # come out one ulp above each of them (seven copies of 0.51208 do), which used to leave no candidate.
    mean_above_ties = 0
    for value in (0.51208, 0.3, 0.77, float(np.float32(0.51208)), 0.123456789):
        for count in range(2, 20):
            tied = np.full(count, value)
            weights = signed_sqrt(tied)
            mean_above_ties += weights.mean() > weights[0]
            c = candidate_set(tied, k=count)
            assert c.members.tolist() == list(range(count))
            assert c.probabilities == pytest.approx(np.full(count, 1 / count))
            ids = [f"copy-{i}" for i in range(count)]
            (choice,) = choose_clips(["dog"], {"dog": (ids, tied)}, 0, "key", count, True, 0.0, set(ids))
            assert isinstance(choice, ConceptChoice) and choice.n_candidates == count
    assert mean_above_ties, "no tie among these exceeds its float mean any more; the test no longer covers the trap"


def test_min_cosine_removes_candidates_before_the_threshold():
    ids = ["a", "b", "c", "d"]
    scores = np.array([0.9, 0.85, 0.3, 0.2])
    matches = {"t": (ids, scores)}
    for seed in range(50):
        (choice,) = choose_clips(["t"], matches, seed, "key", 4, False, 0.8, set(ids))
        assert choice.cosine >= 0.8 and choice.clip_id in ("a", "b")
    # Without the floor the threshold is the mean of all four, and only the two best pass it too;
    # with k=4 and a floor between the two groups, the threshold is recomputed over a and b alone.
    (floored,) = choose_clips(["t"], matches, 0, "key", 4, False, 0.8, set(ids))
    assert floored.threshold == pytest.approx(0.875)
    assert choose_clips(["t"], matches, 0, "key", 4, False, 0.95, set(ids)) == [DroppedConcept("below_min_cosine", 0.9)]


def test_clips_that_are_not_usable_are_skipped_like_used_ones():
    ids = ["loud", "inaudible-1", "inaudible-2", "quiet"]
    matches = {"t": (ids, np.array([0.9, 0.95, 0.94, 0.5])), "u": (["inaudible-1"], np.array([0.99]))}
    usable = {"loud", "quiet"}
    for seed in range(30):
        first, second = choose_clips(["t", "t"], matches, seed, "key", 4, True, 0.0, usable)
        assert {first.clip_id, second.clip_id} == usable
    # The best cosine is the pool's nearest clip, usable or not; a text with no neighbour has none.
    assert choose_clips(["u"], matches, 0, "key", 4, True, 0.0, usable) == [DroppedConcept("no_usable_clip", 0.99)]
    assert choose_clips(["unknown text"], matches, 0, "key", 4, True, 0.0, usable) == [
        DroppedConcept("no_usable_clip", None)
    ]
