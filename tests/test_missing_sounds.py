"""The missing-sounds list: grouping texts by their embeddings, and the stage that merges every
chunk's missing texts into the run's list."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from pipelines.config import validate_config
from schemas import CHUNK_TASKS, MISSING_SOUND_TEXTS, MISSING_SOUNDS, MISSING_TEXTS, make_table, schema_version
from schemas.layout import PoolLayout, SonifyLayout
from stages.io import storage
from stages.search.missing_stage import ListMissingSounds
from stages.search.text_groups import TextGroups


def near(base: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cosine` to the unit vector `base`."""
    other = rng.normal(size=base.size)
    other -= (other @ base) * base
    other /= np.linalg.norm(other)
    return cosine * base + np.sqrt(1 - cosine**2) * other


def planted(dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Three orthogonal sound directions; texts at cosine 0.97 or 0.95 to their direction (so at least
    0.92 to any other text of it, and about 0 to the others), listed in an interleaved order."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(dim, 3)))[0].T
    truth = [0, 1, 0, 2, 1, 0, 2, 1]
    vectors = np.array([near(axes[t], 0.97 if i < 3 else 0.95, rng) for i, t in enumerate(truth)])
    return vectors, truth


def test_texts_of_one_sound_join_the_group_its_first_text_started():
    vectors, truth = planted()
    groups = TextGroups(vectors.shape[1], threshold=0.85, max_leaders=100)
    assignment = groups.assign(vectors)
    # Groups are numbered as they start, so they are the planted sounds in order of first arrival.
    assert assignment.groups.tolist() == truth
    assert assignment.leads.tolist() == [True, True, False, True, False, False, False, False]
    assert groups.count == 3
    first_of = {t: vectors[truth.index(t)] for t in set(truth)}
    for vector, group, cosine, leads in zip(vectors, assignment.groups, assignment.cosines, assignment.leads):
        expected = 1.0 if leads else float(vector @ first_of[group])
        assert cosine == pytest.approx(expected, abs=1e-5)
        assert leads or cosine >= 0.85


def test_grouping_does_not_depend_on_how_the_texts_are_batched():
    vectors, _ = planted(seed=4)
    whole = TextGroups(vectors.shape[1], 0.85, 100).assign(vectors)
    for size in (1, 3):
        groups = TextGroups(vectors.shape[1], 0.85, 100)
        parts = [groups.assign(vectors[i : i + size]) for i in range(0, len(vectors), size)]
        assert np.concatenate([p.groups for p in parts]).tolist() == whole.groups.tolist()
        assert np.concatenate([p.cosines for p in parts]) == pytest.approx(whole.cosines, abs=1e-5)


def test_a_high_threshold_keeps_every_text_apart_and_a_low_one_joins_them_all():
    vectors, _ = planted(seed=1)
    assert TextGroups(vectors.shape[1], 0.999, 100).assign(vectors).groups.tolist() == list(range(8))
    assert TextGroups(vectors.shape[1], -1.0, 100).assign(vectors).groups.tolist() == [0] * 8


def test_past_max_leaders_a_text_that_joins_none_is_a_group_no_later_text_joins():
    vectors, _ = planted(seed=2)
    groups = TextGroups(vectors.shape[1], 0.85, max_leaders=1)
    assignment = groups.assign(vectors)
    # Sound 0 leads the only held group; sounds 1 and 2 give a group of their own to each text.
    assert assignment.groups.tolist() == [0, 1, 0, 2, 3, 0, 4, 5]
    assert assignment.held.tolist() == [True] + [False] * 7
    assert assignment.leads.tolist() == [True, True, False, True, True, False, True, True]


class PlantedText:
    """A text model whose vectors put each text on the axis of its last word."""

    def __init__(self, dim: int = 16) -> None:
        self.axes: dict[str, np.ndarray] = {}
        self.dim = dim

    def embed_text(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            word = text.split()[-1]
            axis = self.axes.setdefault(word, np.eye(self.dim)[len(self.axes)])
            rows.append(near(axis, 0.99, np.random.default_rng(len(text))))
        return np.asarray(rows, np.float32)


def chunk_missing(rows: list[tuple[str, int, int, float | None, list[str]]]) -> object:
    return make_table(
        MISSING_TEXTS,
        {
            "text": [r[0] for r in rows],
            "requests": [r[1] + r[2] for r in rows],
            "below_min_cosine": [r[1] for r in rows],
            "no_usable_clip": [r[2] for r in rows],
            "best_cosine": [r[3] for r in rows],
            "examples": [
                [{"image_id": i, "image_uri": f"/images/{i}.jpg", "image_member": None} for i in r[4]] for r in rows
            ],
        },
    )


def list_stage(out, **grouping) -> ListMissingSounds:
    config = validate_config(
        {
            "pool": {"dir": "/unused-pool"},
            "models": {"clap": {"model": "unused"}, "vlm": [{"name": "given", "backend": "provided", "path": "/x"}]},
            "sonify": {"images": ["/unused/*.jpg"], "out": str(out), "missing_sounds": grouping},
        }
    )
    stage = ListMissingSounds(
        PoolLayout("/unused-pool"),
        SonifyLayout(str(out)),
        ["given"],
        config.models.clap,
        config.retrieval,
        config.sonify.missing_sounds,
    )
    stage.model = PlantedText()
    return stage


def test_the_chunks_missing_texts_are_merged_grouped_and_listed_most_requested_first(tmp_path):
    layout = SonifyLayout(str(tmp_path / "out"))
    storage.write_parquet(
        layout.missing_texts("000000"),
        chunk_missing(
            [
                ("a dog barking", 3, 0, 0.21, ["img-4", "img-2", "img-9"]),
                ("rain on a tin roof", 0, 1, None, ["img-5"]),
                ("sirens wailing", 1, 0, 0.11, ["img-3"]),
            ]
        ),
    )
    storage.write_parquet(
        layout.missing_texts("000001"),
        chunk_missing(
            [
                ("a dog barking", 1, 0, 0.25, ["img-1"]),
                ("dog loudly barking", 2, 0, 0.30, ["img-7", "img-8"]),
                ("heavy rain on a roof", 1, 0, 0.05, ["img-6"]),
            ]
        ),
    )
    storage.write_parquet(layout.missing_texts("000002"), chunk_missing([]))
    stage = list_stage(tmp_path / "out")
    chunks = make_table(CHUNK_TASKS, {"chunk": ["000002", "000000", "000001"]})
    assert stage.process_batch(chunks).equals(chunks)

    texts = storage.read_parquet(layout.missing_sound_texts())
    sounds = storage.read_parquet(layout.missing_sounds())
    assert schema_version(texts.schema) == schema_version(MISSING_SOUND_TEXTS)
    assert schema_version(sounds.schema) == schema_version(MISSING_SOUNDS)
    listed = {row["text"]: row for row in texts.to_pylist()}
    assert [row["text"] for row in texts.to_pylist()] == [
        "a dog barking",
        "dog loudly barking",
        "heavy rain on a roof",
        "rain on a tin roof",
        "sirens wailing",
    ]
    dog = listed["a dog barking"]
    assert (dog["requests"], dog["below_min_cosine"], dog["best_cosine"]) == (4, 4, 0.25)
    assert [e["image_id"] for e in dog["examples"]] == ["img-1", "img-2", "img-4"]
    assert listed["dog loudly barking"]["group_text"] == "a dog barking"
    assert listed["rain on a tin roof"]["group_text"] == "heavy rain on a roof"
    assert listed["sirens wailing"]["group_text"] == "sirens wailing"
    assert listed["rain on a tin roof"]["best_cosine"] is None

    by_group = [
        {k: row[k] for k in ("text", "texts", "member_texts", "requests", "below_min_cosine", "no_usable_clip")}
        for row in sounds.to_pylist()
    ]
    assert by_group == [
        {
            "text": "a dog barking",
            "texts": 2,
            "member_texts": ["a dog barking", "dog loudly barking"],
            "requests": 6,
            "below_min_cosine": 6,
            "no_usable_clip": 0,
        },
        {
            "text": "heavy rain on a roof",
            "texts": 2,
            "member_texts": ["heavy rain on a roof", "rain on a tin roof"],
            "requests": 2,
            "below_min_cosine": 1,
            "no_usable_clip": 1,
        },
        {
            "text": "sirens wailing",
            "texts": 1,
            "member_texts": ["sirens wailing"],
            "requests": 1,
            "below_min_cosine": 1,
            "no_usable_clip": 0,
        },
    ]
    assert sounds.column("best_cosine").to_pylist() == [0.30, 0.05, 0.11]
    assert [[e["image_id"] for e in row] for row in sounds.column("examples").to_pylist()] == [
        ["img-1", "img-2", "img-4"],
        ["img-5", "img-6"],
        ["img-3"],
    ]
    stats = json.loads(storage.read_bytes(layout.missing_sounds_stats()))
    assert stats == {"settings": {"group_cosine": 0.9, "max_groups": 100_000}, "texts": 5, "groups": 3, "requests": 9}
    # Independent reader: the groups add up to the chunks' requests.
    query = f"SELECT sum(requests) FROM read_parquet('{tmp_path}/out/missing/*.parquet')"
    total = duckdb.connect().execute(query).fetchone()[0]
    assert total == sum(row["requests"] for row in sounds.to_pylist()) == 9

    # The same settings again: nothing is redone. Other settings regroup the same texts.
    written = (tmp_path / "out" / "missing_sounds.parquet").stat().st_mtime_ns
    list_stage(tmp_path / "out").process_batch(chunks)
    assert (tmp_path / "out" / "missing_sounds.parquet").stat().st_mtime_ns == written
    list_stage(tmp_path / "out", group_cosine=0.999).process_batch(chunks)
    assert storage.read_parquet(layout.missing_sounds()).num_rows == 5
    assert json.loads(storage.read_bytes(layout.missing_sounds_stats()))["settings"]["group_cosine"] == 0.999
