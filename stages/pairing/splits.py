"""Splits of a dataset: which split an image, and with split_by_clip a pool recording, belongs to.

A key goes to a split by a stable hash: SHA-256 of a purpose and the key, read as a number in
[0, 1), against the splits' cumulative fractions in their configured order. The same key always
lands in the same split, on any worker and in any run; images (purpose `image`) and source
recordings (purpose `source`) are hashed apart, so which recordings a split gets does not depend
on which images it gets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

IMAGE = "image"
SOURCE = "source"


def unit_hash(purpose: str, key: str) -> float:
    """A number in [0, 1) fixed by (purpose, key)."""
    digest = hashlib.sha256(f"{purpose}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, splits: Mapping[str, float], purpose: str = IMAGE) -> str:
    """The split of `key` among `splits` (name -> fraction, summing to 1)."""
    names = list(splits)
    edges = np.cumsum([splits[name] for name in names])
    position = int(np.searchsorted(edges, unit_hash(purpose, key), side="right"))
    # Fractions that sum to 1 within float rounding leave at most a sliver past the last edge.
    return names[min(position, len(names) - 1)]
