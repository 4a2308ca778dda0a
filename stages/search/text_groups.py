"""Grouping near-identical texts by their embeddings, one pass, most requested first.

Leader clustering: texts arrive in a fixed order (most requested first), each is compared with the
first text of every group so far, and joins the most similar one at or above `threshold`; a text
that joins none starts a group of its own and leads it. A group is named by its leader, the most
requested text in it, and the result depends only on the order and the vectors (up to float
rounding at the threshold), not on how the texts are batched. Only the leaders' vectors are held,
at most `max_leaders` of them: past that, a text that joins no group is a group of its own that
later texts are not compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from stages.embed.clap import normalize_rows


@dataclass(frozen=True)
class Assignment:
    """Where each text of a batch went: the index of its group (in order of creation), its cosine to
    the group's leader (1 for a leader), whether it started the group, and whether that group is
    held for later texts to join (false past max_leaders)."""

    groups: np.ndarray
    cosines: np.ndarray
    leads: np.ndarray
    held: np.ndarray


class TextGroups:
    def __init__(self, dim: int, threshold: float, max_leaders: int) -> None:
        self.threshold = threshold
        self.max_leaders = max_leaders
        self.leaders = faiss.IndexFlatIP(dim)
        # Group index of each leader row of the index.
        self.leader_groups: list[int] = []
        self.count = 0

    def assign(self, vectors: np.ndarray) -> Assignment:
        """Assigns the texts of `vectors` (rows, in arrival order) to groups."""
        vectors = normalize_rows(vectors)
        n = len(vectors)
        groups = np.empty(n, np.int64)
        cosines = np.empty(n, np.float64)
        leads = np.zeros(n, bool)
        held = np.zeros(n, bool)
        if self.leaders.ntotal:
            scores, rows = self.leaders.search(vectors, 1)
            best, best_rows = scores[:, 0].astype(np.float64), rows[:, 0]
        else:
            best, best_rows = np.full(n, -np.inf), np.full(n, -1)
        # Leaders made in this batch, compared by hand with the batch's later texts.
        new_vectors: list[np.ndarray] = []
        new_groups: list[int] = []
        for i, vector in enumerate(vectors):
            group, cosine = (self.leader_groups[best_rows[i]], best[i]) if best_rows[i] >= 0 else (-1, -np.inf)
            if new_vectors:
                similar = np.asarray(new_vectors) @ vector
                j = int(np.argmax(similar))
                # An earlier leader wins a tie, as the index search would give it.
                if similar[j] > cosine:
                    group, cosine = new_groups[j], float(similar[j])
            if cosine >= self.threshold:
                groups[i], cosines[i] = group, cosine
                continue
            groups[i], cosines[i], leads[i] = self.count, 1.0, True
            if self.leaders.ntotal + len(new_vectors) < self.max_leaders:
                held[i] = True
                new_vectors.append(vector)
                new_groups.append(self.count)
            self.count += 1
        if new_vectors:
            self.leaders.add(np.asarray(new_vectors, np.float32))
            self.leader_groups.extend(new_groups)
        return Assignment(groups, cosines, leads, held)
