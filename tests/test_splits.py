"""Splits: the stable hash that assigns images and source recordings, and planning that keeps a
split's audio apart (sonify.split_by_clip)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from pipelines.sonify.plans import number_shards
from stages.pairing.planning import clips_by_split, plan_chunk
from stages.pairing.splits import IMAGE, SOURCE, split_of, unit_hash
from tests.test_planning import TEXTS, chunk_scenes, config, matches_of, pool_clips

SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def test_keys_land_in_their_split_in_proportion_and_always_the_same_one():
    counts = Counter(split_of(f"image-{i}", SPLITS) for i in range(50_000))
    assert counts["train"] / 50_000 == pytest.approx(0.8, abs=0.01)
    assert counts["validation"] / 50_000 == pytest.approx(0.1, abs=0.01)
    assert counts["test"] / 50_000 == pytest.approx(0.1, abs=0.01)
    assert [split_of(f"image-{i}", SPLITS) for i in range(200)] == [split_of(f"image-{i}", SPLITS) for i in range(200)]
    assert 0 <= unit_hash(IMAGE, "") < 1
    # A name that is not valid UTF-8 (kept as surrogate escapes) has a split like any other.
    assert split_of("caf\udce9", SPLITS) in SPLITS


def test_images_and_sources_are_hashed_apart():
    keys = [f"k{i}" for i in range(2000)]
    same = sum(split_of(k, SPLITS, IMAGE) == split_of(k, SPLITS, SOURCE) for k in keys) / len(keys)
    # Independent draws agree with probability 0.8^2 + 0.1^2 + 0.1^2 = 0.66; one hash for both would give 1.
    assert same == pytest.approx(0.66, abs=0.05)


def test_split_by_clip_keeps_each_recording_in_one_split_and_counts_its_cost():
    splits = {"train": 0.5, "test": 0.5}
    free = config(splits=splits)
    apart = config(splits=splits, split_by_clip=True)
    matches = matches_of(TEXTS, clips=3)
    scenes = chunk_scenes(40)
    plain, kept = plan_chunk(free, scenes, matches, pool_clips()), plan_chunk(apart, scenes, matches, pool_clips())

    sources = dict(zip(*[pool_clips().column(c).to_pylist() for c in ("clip_id", "recording")]))
    split_of_clip = {c: s for s, clips in clips_by_split(sources, splits).items() for c in clips}
    rows = [row for shard in kept.shards for row in shard.to_pylist()]
    assert {row["split"] for row in rows} == {"train", "test"}
    recordings = {}
    for row in rows:
        assert row["split"] == split_of(row["image_id"], splits)
        for concept in row["concepts"]:
            assert split_of_clip[concept["clip_id"]] == row["split"]
            recordings.setdefault(sources[concept["clip_id"]], set()).add(row["split"])
    assert all(len(used_by) == 1 for used_by in recordings.values())

    # The same images, planned without the rule, lose nothing to it; with it, some concepts go.
    assert plain.stats["concepts_other_split"] == plain.stats["concepts_rechosen_for_split"] == 0
    other_split = [
        d for row in rows + kept.rejected.to_pylist() for d in row["dropped"] if d["reason"] == "other_split"
    ]
    assert kept.stats["concepts_other_split"] == len(other_split) > 0
    assert kept.stats["concepts_rechosen_for_split"] > 0
    # The pool has those sounds: they are not missing sounds.
    assert kept.missing.num_rows == 0
    # Without split_by_clip the splits share clips.
    plain_rows = [row for shard in plain.shards for row in shard.to_pylist()]
    by_split = {s: {c["clip_id"] for r in plain_rows if r["split"] == s for c in r["concepts"]} for s in splits}
    assert by_split["train"] & by_split["test"]


def test_shards_are_numbered_within_their_split_across_chunks():
    plan = plan_chunk(
        config(splits={"train": 0.5, "test": 0.5}, shard_size_mb=0.2), chunk_scenes(), matches_of(TEXTS), pool_clips()
    )
    splits = plan.stats["shard_splits"]
    assert set(splits) == {"train", "test"} and len(splits) == len(plan.shards)
    row = {
        "shard_plan_urls": [f"plans/x-{i}" for i in range(len(splits))],
        "shard_splits": splits,
        **{name: 0 for name in ("samples", "rejected", "concepts_below_min_cosine", "concepts_no_usable_clip")},
        **{name: 0 for name in ("concepts_clip_cap", "concepts_other_split", "concepts_rechosen_for_split")},
        "mapped_concepts_missing": 0,
        "fallbacks": 0,
        "rejection_reasons": [],
    }
    table = pa.Table.from_pylist([row, row])
    tasks, _, _ = number_shards(table)
    names = tasks.column("shard").to_pylist()
    per_split = Counter(splits)
    assert sorted(names) == sorted(
        [f"train-{i:06d}" for i in range(2 * per_split["train"])]
        + [f"test-{i:06d}" for i in range(2 * per_split["test"])]
    )
