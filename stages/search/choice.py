"""Choosing a pool clip for a sounding concept: signed square root, dynamic top-k threshold, and a
weighted random choice inside the candidate set (the paper's Algorithm 1, as DESIGN.md states it).

    r_i = sign(s_i) * sqrt(|s_i|)          over the top-K cosine scores s_1 >= ... >= s_K
    tau = mean(r_1 .. r_k)                  k <= K
    C   = { i <= k : r_i >= tau }           1 <= |C| <= k; r_1 and ties at tau always belong
    p_i = r_i / sum_{j in C} r_j

Before the threshold, the neighbours a concept may not use are removed: clips already chosen for an
earlier concept of the same sample, clips not audible at the mix rate, and clips whose cosine is
below the floor `min_cosine`.

Every choice draws from a generator seeded by (global seed, sample key, concept index) through
SHA-256, so a dataset does not depend on worker count, partitioning or Python's hash seed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Container, Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from stages.audio.standardize import clip_family

# Relative tolerance of "r_i >= tau": the float mean of equal scores can come out one ulp above
# each of them, and identical files in a pool give exactly equal scores.
TIE_TOLERANCE = 1e-9


def signed_sqrt(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return np.sign(scores) * np.sqrt(np.abs(scores))


def concept_rng(seed: int, sample_key: str, concept_index: int, purpose: str = "retrieval") -> np.random.Generator:
    """The generator of one concept's random draws; `purpose` separates independent streams."""
    digest = hashlib.sha256(f"{seed}\0{sample_key}\0{concept_index}\0{purpose}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


@dataclass(frozen=True)
class CandidateSet:
    weights: np.ndarray  # transformed scores r_1..r_k
    threshold: float  # tau
    members: np.ndarray  # positions (into the top-K list) of the candidate set C
    probabilities: np.ndarray  # p over `members`
    fallback: bool  # tau <= 0: top-1 is used


def candidate_set(scores: np.ndarray, k: int, use_ssr: bool = True) -> CandidateSet:
    """The candidate set of one concept from its top-K scores (sorted, best first)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no scores: the pool returned no neighbours")
    if np.any(np.diff(scores) > 1e-12):
        raise ValueError("scores must be sorted best first")
    weights = signed_sqrt(scores) if use_ssr else scores.copy()
    top = weights[: max(1, min(k, weights.size))]
    threshold = float(top.mean())
    if threshold <= 0:
        return CandidateSet(weights, threshold, np.array([0]), np.array([1.0]), True)
    members = np.flatnonzero((top >= threshold) | np.isclose(top, threshold, rtol=TIE_TOLERANCE, atol=0.0))
    chosen = top[members]
    return CandidateSet(weights, threshold, members, chosen / chosen.sum(), False)


def choose(candidates: CandidateSet, rng: np.random.Generator) -> int:
    """Position (into the top-K list) of the chosen clip."""
    if candidates.members.size == 1:
        return int(candidates.members[0])
    return int(rng.choice(candidates.members, p=candidates.probabilities))


@dataclass(frozen=True)
class ConceptChoice:
    clip_id: str
    cosine: float  # raw
    corrected: float  # the score the threshold ran on: the cosine less the clip's hubness penalty
    ssr: float
    threshold: float
    n_candidates: int
    fallback: bool


@dataclass(frozen=True)
class DroppedConcept:
    """A concept that gets no clip, and why: `below_min_cosine` (every usable neighbour scores
    under the floor), `no_usable_clip` (no neighbour at all that is audible at the mix rate and
    not already used by the sample) or `clip_cap` (every neighbour left is at
    retrieval.max_uses_per_clip). `best_cosine`: the highest raw cosine among all its neighbours,
    usable or not (None when the search returned none): how near the pool came."""

    reason: str
    best_cosine: float | None = None


def choose_under_cap(
    candidates: CandidateSet, ids: list[str], uses: Mapping[str, int], cap: int, rng: np.random.Generator
) -> int | None:
    """Position of the chosen clip when no clip may be used more than `cap` times: the draw is made
    again among the candidates under the cap, with their weights; failing those, the best-ranked
    neighbour under the cap is taken; None when every neighbour has reached it."""
    open_members = np.array([m for m in candidates.members if uses.get(ids[m], 0) < cap], dtype=np.int64)
    if open_members.size == candidates.members.size:
        return choose(candidates, rng)
    if open_members.size:
        weights = candidates.weights[open_members]
        if open_members.size == 1 or weights.sum() <= 0:
            return int(open_members[0])
        return int(rng.choice(open_members, p=weights / weights.sum()))
    return next((i for i, c in enumerate(ids) if uses.get(c, 0) < cap), None)


def choose_clips(
    texts: list[Hashable],
    matches: Mapping[Hashable, tuple[list[str], np.ndarray]],
    seed: int,
    sample_key: str,
    k: int,
    use_ssr: bool,
    min_cosine: float,
    usable: Container[str],
    corrected: Mapping[Hashable, np.ndarray] | None = None,
    uses: Counter | None = None,
    max_uses: int | None = None,
) -> list[ConceptChoice | DroppedConcept]:
    """One clip per concept of a sample, each concept given by its query (`texts`: its text, or any
    other key of `matches`, as for a mapped concept). Only clips in `usable` (audible at the mix rate) are
    candidates; clips chosen for earlier concepts of the sample are removed from later concepts'
    neighbours, and so are the variants of those clips and the clips they are variants of
    (stages.audio.standardize.clip_family), so no recording is heard twice in one sample; neighbours
    under `min_cosine` (a floor on the raw cosine) are removed before the threshold is computed.

    `corrected`: per text, the hubness-corrected scores of its neighbours (in the order of
    `matches`, which ranks them): SSR and the threshold run on those; without it, on the cosines.
    `uses` counts the picks of each clip so far (in the chunk being planned) and is updated; a clip
    with `max_uses` picks is chosen no more (choose_under_cap), and a concept whose neighbours have
    all reached it is dropped as `clip_cap`."""
    used: set[str] = set()
    choices: list[ConceptChoice | DroppedConcept] = []
    for position, text in enumerate(texts):
        clip_ids, scores = matches.get(text, ([], np.array([])))
        scores = np.asarray(scores, dtype=np.float64)
        best = float(scores.max()) if scores.size else None
        allowed = [i for i, c in enumerate(clip_ids) if c in usable and clip_family(c) not in used]
        keep = [i for i in allowed if scores[i] >= min_cosine]
        if not keep:
            choices.append(DroppedConcept("below_min_cosine" if allowed else "no_usable_clip", best))
            continue
        ids = [clip_ids[i] for i in keep]
        kept_scores = scores[keep]
        ranked = kept_scores if corrected is None else np.asarray(corrected[text], dtype=np.float64)[keep]
        candidates = candidate_set(ranked, k, use_ssr)
        rng = concept_rng(seed, sample_key, position)
        pick = choose(candidates, rng) if max_uses is None else choose_under_cap(candidates, ids, uses, max_uses, rng)
        if pick is None:
            choices.append(DroppedConcept("clip_cap", best))
            continue
        used.add(clip_family(ids[pick]))
        if uses is not None:
            uses[ids[pick]] += 1
        choices.append(
            ConceptChoice(
                clip_id=ids[pick],
                cosine=float(kept_scores[pick]),
                corrected=float(ranked[pick]),
                ssr=float(signed_sqrt(ranked[pick])),
                threshold=candidates.threshold,
                n_candidates=int(candidates.members.size),
                fallback=candidates.fallback,
            )
        )
    return choices
