"""The mapper as a scene source (models.vlm, backend: mapper), without Ray: its config, the stage
that maps images to one concept each, how mapped concepts are keyed and searched, how planning
chooses them in modes scene and ambience and marks them in the manifest, and the check that refuses
a checkpoint made for another CLAP before any work."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipelines.config import ConfigError, validate_config
from pipelines.sonify.checks import SonifyError, check_mappers
from schemas import CHUNK_TASKS, IMAGE_REFS, MATCHES, MIX_CLIPS, SCENES, make_table
from schemas.layout import PoolLayout
from stages.embed.clap import clap_identity
from stages.embed.clip_image import clip_identity, load_clip
from stages.embed.map_images_stage import MapImages
from stages.embed.mapper import MapperError, TrainingSettings, load_mapper, map_vectors, mapper_meta, save_mapper
from stages.images.decode_stage import DecodeImages
from stages.images.decoding import decode_image
from stages.pairing.planning import missing_texts, plan_chunk, planning_scenes, with_ambience
from stages.search.search_stage import concept_texts, mapped_queries
from tests.test_clip_pairs import jpeg
from tests.test_planning import pool_clips


def write_mapper(url: str, clip: dict, clap: dict, seed: int = 0) -> None:
    """A small random mapper checkpoint whose meta names `clip` and `clap` (no training: the tests
    need a checkpoint of the right shape and identities, not a good one)."""
    import torch

    from stages.embed.mapper import new_mapper

    settings = TrainingSettings(16, 1, 1, 2, 1e-3, 0.0, 1.0, 0.05, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = new_mapper(clip["dim"], clap["dim"], settings.hidden_dim, settings.blocks)
    meta = mapper_meta(settings, model, clip, clap, {"embedded": 0, "failed": 0}, {})
    save_mapper(url, model, meta)


def base_tree(**models) -> dict:
    return {"pool": {"dir": "/unused"}, "models": {"clap": {"model": "unused"}, **models}}


def mapper_entry(**extra) -> dict:
    return {"name": "mapped", "backend": "mapper", "checkpoint": "m.safetensors", **extra}


def given_entry() -> dict:
    return {"name": "given", "backend": "provided", "path": "c.jsonl"}


def test_a_mapper_entry_needs_models_clip_and_ambience_needs_another_source():
    with pytest.raises(ConfigError, match=r"models.vlm.1: backend mapper needs models.clip"):
        validate_config(base_tree(vlm=[given_entry(), mapper_entry()]))
    clip = {"model": "unused"}
    config = validate_config(base_tree(clip=clip, vlm=[given_entry(), mapper_entry(mode="ambience")]))
    assert config.models.vlm[1].mode == "ambience" and config.models.vlm[1].batch_size == 8
    assert validate_config(base_tree(clip=clip, vlm=[mapper_entry()])).models.vlm[0].mode == "scene"
    with pytest.raises(ConfigError, match="mode ambience adds its concept to the scenes of other entries"):
        validate_config(base_tree(clip=clip, vlm=[mapper_entry(mode="ambience")]))
    with pytest.raises(ConfigError, match="backend mapper does not take path"):
        validate_config(base_tree(clip=clip, vlm=[mapper_entry(path="c.jsonl")]))
    with pytest.raises(ConfigError, match="mode"):
        validate_config(base_tree(clip=clip, vlm=[mapper_entry(mode="background")]))


def scene_rows() -> pa.Table:
    """Two images seen by a text VLM (`given`) and a mapper (`mapped`): image a fine; image b's
    text scene has no concepts; a third image c failed to decode for both."""
    base = {"uri": "u", "member": None, "width": 64, "height": 48, "format": "PNG", "num_bytes": 100}
    vector = np.full(4, 0.5, np.float32)
    rows = [
        {"image_id": "a", "vlm": "given", "concepts": [{"label": "dog", "text": "a dog barking"}]},
        {"image_id": "a", "vlm": "mapped", "concepts": [{"label": "mapped", "text": None, "vector": vector}]},
        {"image_id": "b", "vlm": "given", "concepts": [], "dropped": "no_concepts"},
        {"image_id": "b", "vlm": "mapped", "concepts": [{"label": "mapped", "text": None, "vector": vector * -1}]},
        {"image_id": "c", "vlm": "given", "error": "c: broken", "error_kind": "undecodable", "error_stage": "images"},
        {"image_id": "c", "vlm": "mapped", "error": "c: broken", "error_kind": "undecodable", "error_stage": "images"},
    ]
    full = [{**base, "dropped_empty_concepts": 0, **row} for row in rows]
    return pa.Table.from_pylist(full, schema=SCENES)


def test_mapped_concepts_are_found_by_mapper_and_image_and_texts_stay_texts():
    scenes = scene_rows()
    assert concept_texts(scenes) == ["a dog barking"]
    mapped = mapped_queries(scenes)
    assert mapped.mappers == ["mapped", "mapped"] and mapped.image_ids == ["a", "b"]
    assert mapped.vectors.dtype == np.float32 and mapped.vectors.shape == (2, 4)
    np.testing.assert_array_equal(mapped.vectors[1], np.full(4, -0.5, np.float32))
    assert len(mapped_queries(scenes.filter(pa.array([True, False] * 3)))) == 0

    slim = planning_scenes(scenes)
    assert slim.column("concepts").to_pylist()[:2] == [
        [{"label": "dog", "text": "a dog barking", "mapped": False}],
        [{"label": "mapped", "text": None, "mapped": True}],
    ]
    assert slim.column("concepts").to_pylist()[4] is None


def test_ambience_joins_the_other_scenes_of_its_image_that_go_on():
    rows = planning_scenes(scene_rows()).to_pylist()
    assert with_ambience(rows, []) == rows
    joined = with_ambience(rows, ["mapped"])
    assert [(r["image_id"], r["vlm"]) for r in joined] == [("a", "given"), ("b", "given"), ("c", "given")]
    assert joined[0]["concepts"] == [
        {"label": "dog", "text": "a dog barking", "mapped": False},
        {"label": "mapped", "text": None, "mapped": True},
    ]
    # A dropped or failed scene gets nothing: the ambience is added to scenes that go on, not rescued ones.
    assert joined[1]["concepts"] == [] and joined[2]["concepts"] is None


def matches_for(scenes: pa.Table, clips: int = 8) -> pa.Table:
    """Neighbours for the text and for each mapped concept: the mapped ones only clips 20-23, far apart
    from the text's, so that the source of every choice can be told by its clip."""
    rng = np.random.default_rng(1)
    texts, mapped = concept_texts(scenes), mapped_queries(scenes)
    ids = [[f"clip-{i:02d}" for i in rng.choice(16, size=clips, replace=False)] for _ in texts]
    ids += [[f"clip-{i:02d}" for i in (20, 21, 22, 23)] for _ in mapped.mappers]
    scores = [np.sort(rng.uniform(0.2, 0.6, len(row)))[::-1].astype(np.float32) for row in ids]
    n = len(texts) + len(mapped)
    return make_table(
        MATCHES,
        {
            "text": [*texts, *[None] * len(mapped)],
            "mapper": [*[None] * len(texts), *mapped.mappers],
            "image_id": [*[None] * len(texts), *mapped.image_ids],
            "clip_ids": ids,
            "scores": scores,
            "corrected": [None] * n,
        },
    )


def planned(mode: str, min_cosine: float = -1.0):
    config = validate_config(
        {
            **base_tree(clip={"model": "unused"}, vlm=[given_entry(), mapper_entry(mode=mode)]),
            "retrieval": {"search_k": 8, "k": 4, "min_cosine": min_cosine},
        }
    )
    scenes = scene_rows()
    return plan_chunk(config, scenes, matches_for(scenes), pool_clips())


def manifest_rows(plan) -> list[dict]:
    return [row for shard in plan.shards for row in shard.to_pylist()]


def test_scene_mode_gives_the_mapper_a_sample_of_its_own_marked_as_mapped():
    plan = planned("scene")
    samples = {row["key"]: row for row in manifest_rows(plan)}
    assert sorted(samples) == ["a__given", "a__mapped", "b__mapped"]
    assert [(c["label"], c["text"], c["source"]) for c in samples["a__given"]["concepts"]] == [
        ("dog", "a dog barking", "text")
    ]
    for key in ("a__mapped", "b__mapped"):
        [concept] = samples[key]["concepts"]
        assert (concept["label"], concept["text"], concept["source"]) == ("mapped", None, "mapper")
        assert concept["clip_id"] in {"clip-20", "clip-21", "clip-22", "clip-23"}
        # Chosen as a text concept is: SSR over its scores and the dynamic threshold.
        assert concept["ssr"] == pytest.approx(np.sqrt(concept["corrected_cosine"]))
        assert 1 <= concept["n_candidates"] <= 4
    assert {r["key"]: r["error_kind"] for r in plan.rejected.to_pylist()} == {
        "b__given": "no_concepts",
        "c__given": "undecodable",
        "c__mapped": "undecodable",
    }


def test_ambience_mode_adds_the_mapped_concept_to_the_text_scene_only():
    plan = planned("ambience")
    [sample] = manifest_rows(plan)
    assert sample["key"] == "a__given"
    assert [(c["text"], c["source"]) for c in sample["concepts"]] == [("a dog barking", "text"), (None, "mapper")]
    assert sample["concepts"][1]["clip_id"] in {"clip-20", "clip-21", "clip-22", "clip-23"}
    # The ambience scenes are no rows of their own, kept or rejected.
    assert {r["key"] for r in plan.rejected.to_pylist()} == {"b__given", "c__given"}


def test_a_mapped_concept_without_a_clip_is_dropped_counted_and_kept_out_of_the_missing_texts():
    # Every score is below 0.9: every concept, text and mapped, is dropped below the floor.
    plan = planned("scene", min_cosine=0.9)
    rejected = {r["key"]: r for r in plan.rejected.to_pylist()}
    [dropped] = rejected["a__mapped"]["dropped"]
    assert {k: v for k, v in dropped.items() if k != "best_cosine"} == {
        "label": "mapped",
        "text": None,
        "source": "mapper",
        "reason": "below_min_cosine",
    }
    assert 0.2 <= dropped["best_cosine"] < 0.9
    assert rejected["a__given"]["dropped"][0]["source"] == "text"
    assert plan.stats["mapped_concepts_missing"] == 2
    assert plan.stats["concepts_below_min_cosine"] == 3
    assert plan.missing.column("text").to_pylist() == ["a dog barking"]
    # Straight from manifest rows too: a null text is left out, not a crash.
    assert missing_texts(rejected.values()).num_rows == 1


@pytest.fixture(scope="module")
def identities(tiny_models):
    models = {"clap": {"model": tiny_models["clap_transformers"]}, "clip": {"model": tiny_models["clip"]}}
    config = validate_config({"pool": {"dir": "/unused"}, "models": models})
    return {"clap": clap_identity(config.models.clap), "clip": clip_identity(config.models.clip)}


def image_batch() -> pa.Table:
    return make_table(
        IMAGE_REFS,
        {
            "image_id": ["one", "two", "bad"],
            "uri": ["memory://one.jpg", "memory://two.jpg", "memory://bad.jpg"],
            "member": [None] * 3,
            "error": [None, None, None],
            "error_kind": [None] * 3,
        },
    )


def test_the_stage_maps_each_image_to_one_unit_vector_in_claps_space(tmp_path, tiny_models, identities):
    from stages.io import storage

    for name, data in (("one", jpeg(1)), ("two", jpeg(2)), ("bad", b"no image")):
        storage.write_bytes(f"memory://{name}.jpg", data)
    checkpoint = str(tmp_path / "mapper.safetensors")
    write_mapper(checkpoint, identities["clip"], identities["clap"])
    config = validate_config(
        base_tree(
            clip={"model": tiny_models["clip"], "batch_size": 2},
            vlm=[mapper_entry(checkpoint=checkpoint, batch_size=4)],
        )
    )
    entry = config.models.vlm[0]
    decoded = DecodeImages(16, 10_000_000, batch_size=4).process_batch(image_batch())
    stage = MapImages(entry, config.models.clip, identities["clap"], identities["clip"])
    assert stage.resources().batch_size == 4 and stage.resources().actors == 1
    stage.setup()
    scenes = stage.process_batch(decoded)
    assert scenes.schema == SCENES
    rows = {r["image_id"]: r for r in scenes.to_pylist()}
    assert rows["bad"]["concepts"] is None and rows["bad"]["error_stage"] == "images"
    model, _ = load_mapper(checkpoint, identities["clap"], identities["clip"])
    clip = load_clip(config.models.clip)
    images = [decode_image(jpeg(i)).image for i in (1, 2)]
    expected = map_vectors(model, clip.embed_images(images))
    for i, name in enumerate(("one", "two")):
        [concept] = rows[name]["concepts"]
        assert (concept["label"], concept["text"], rows[name]["vlm"]) == ("mapped", None, "mapped")
        vector = np.asarray(concept["vector"], np.float32)
        assert vector.shape == (identities["clap"]["dim"],)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(vector, expected[i], atol=1e-5)
    # The mapped concepts are what the search reads, by mapper and image.
    assert mapped_queries(scenes).image_ids == ["one", "two"]

    # A checkpoint for another CLAP is refused by the worker too.
    other = str(tmp_path / "other.safetensors")
    write_mapper(other, identities["clip"], {**identities["clap"], "content": "another checkpoint"})
    refused = MapImages(entry.model_copy(update={"checkpoint": other}), config.models.clip, identities["clap"], None)
    with pytest.raises(MapperError, match="maps into the space of CLAP"):
        refused.setup()


def test_sonify_checks_refuse_a_mapper_for_another_clap_or_clip(tmp_path, tiny_models, identities):
    pool = PoolLayout(str(tmp_path / "pool"))
    (tmp_path / "pool").mkdir()
    with open(pool.pool_meta(), "w") as handle:
        json.dump({"format": PoolLayout.FORMAT, "clap": identities["clap"]}, handle)
    good, other_clap, other_clip = (str(tmp_path / f"{n}.safetensors") for n in ("good", "clap", "clip"))
    write_mapper(good, identities["clip"], identities["clap"])
    write_mapper(other_clap, identities["clip"], {**identities["clap"], "content": "another checkpoint"})
    write_mapper(other_clip, {**identities["clip"], "content": "another clip"}, identities["clap"])

    def config(checkpoint: str):
        tree = base_tree(vlm=[given_entry(), mapper_entry(checkpoint=checkpoint)])
        tree["models"] |= {"clap": {"model": tiny_models["clap_transformers"]}, "clip": {"model": tiny_models["clip"]}}
        return validate_config(tree)

    assert check_mappers(config(good), pool) == identities
    with pytest.raises(SonifyError, match=r"models.vlm mapped: mapper checkpoint .*clap.safetensors maps into"):
        check_mappers(config(other_clap), pool)
    with pytest.raises(SonifyError, match="was trained on CLIP"):
        check_mappers(config(other_clip), pool)
    with pytest.raises(SonifyError, match="does not exist"):
        check_mappers(config(str(tmp_path / "none.safetensors")), pool)
    without = validate_config(base_tree(vlm=[given_entry()]))
    assert check_mappers(without, pool) is None


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_search_stage_searches_mapped_vectors_with_the_texts_among_usable_clips_and_corrected(tmp_path, kind):
    from schemas.config import ClapConfig, IndexConfig, RetrievalConfig
    from schemas.layout import SonifyLayout
    from stages.io import storage
    from stages.search.faiss_index import build_index
    from stages.search.search_stage import RetrieveChunks
    from tests.test_retrieve import FakeClap, unit
    from tests.test_search_filter import clip_vectors

    layout = SonifyLayout(str(tmp_path / "out"))
    rng = np.random.default_rng(8)
    mapped = unit(rng.standard_normal((2, 16)))
    base = {"uri": "u", "member": None, "width": 64, "height": 48, "format": "PNG", "num_bytes": 1}
    given = [{"image_id": i, "vlm": "given", "concepts": [{"label": "x", "text": "rain"}]} for i in ("a", "b")]
    scenes = [
        {"image_id": i, "vlm": "mapped", "concepts": [{"label": "mapped", "text": None, "vector": v}]}
        for i, v in zip(("a", "b"), mapped)
    ]
    for name, rows in (("given", given), ("mapped", scenes)):
        table = pa.Table.from_pylist([{**base, "dropped_empty_concepts": 0, **r} for r in rows], schema=SCENES)
        storage.write_parquet(layout.scenes(name, "000000"), table)
    usable = ["clip-0", "clip-2", "clip-3", "clip-5", "clip-6"]
    rows = {name: [None] * len(usable) for name in MIX_CLIPS.names}
    rows |= {"clip_id": usable, "recording": usable, "lufs": [-20.0] * 5, "part": ["p"] * 5}
    rows |= {"audio_offset": [0] * 5, "audio_bytes": [1] * 5, "generated": [False] * 5}
    storage.write_parquet(layout.mix_clips(), make_table(MIX_CLIPS, rows))
    stage = RetrieveChunks(
        PoolLayout(str(tmp_path / "pool")),
        layout,
        ["given", "mapped"],
        ClapConfig(model="unused", batch_size=2),
        RetrievalConfig(search_k=3, recall_every=1),
    )
    stage.model = FakeClap({"rain": unit(rng.standard_normal((1, 16)))[0]})
    stage.index = build_index(clip_vectors(), IndexConfig(kind=kind))
    stage.clip_ids = np.array([f"clip-{i}" for i in range(8)], dtype=object)
    stage.limit_to_usable_clips()
    # clip-2 is a hub: its penalty pushes it down every ranking, mapped ones included.
    stage.penalties = np.array([0.5 if c == "clip-2" else 0.0 for c in stage.clip_ids], np.float32)
    [row] = stage.process_batch(make_table(CHUNK_TASKS, {"chunk": ["000000"]})).to_pylist()
    assert (row["texts"], row["mapped_queries"]) == (1, 2)
    matches = storage.read_parquet(row["matches_url"])
    assert matches.schema == MATCHES
    found = {(m["text"], m["mapper"], m["image_id"]): m for m in matches.to_pylist()}
    assert set(found) == {("rain", None, None), (None, "mapped", "a"), (None, "mapped", "b")}
    vectors = {f"clip-{i}": v for i, v in enumerate(clip_vectors())}
    for image, query in zip(("a", "b"), mapped):
        match = found[(None, "mapped", image)]
        score = {c: float(vectors[c] @ query) - (0.5 if c == "clip-2" else 0.0) for c in usable}
        assert match["clip_ids"] == sorted(usable, key=lambda c: -score[c])[:3]
        assert match["scores"] == pytest.approx([float(vectors[c] @ query) for c in match["clip_ids"]], abs=1e-5)
        assert match["corrected"] == pytest.approx([score[c] for c in match["clip_ids"]], abs=1e-5)


def test_a_run_without_texts_calibrates_an_approximate_index_on_its_mapped_vectors(tmp_path):
    from schemas.config import ClapConfig, IndexConfig, RetrievalConfig
    from schemas.layout import SonifyLayout
    from stages.io import storage
    from stages.search.faiss_index import build_index
    from stages.search.search_stage import MappedQueries, RetrieveChunks, calibration_vectors
    from tests.test_retrieve import unit
    from tests.test_search_filter import clip_vectors

    def chunk(n: int, seed: int) -> MappedQueries:
        return MappedQueries(["m"] * n, [f"i{k}" for k in range(n)], unit(np.random.default_rng(seed).random((n, 16))))

    first, second = chunk(3, 1), chunk(4, 2)
    picked = calibration_vectors(iter([first, chunk(0, 0), second, chunk(5, 3)]), 5)
    # The first chunks that hold 5 (3 + 4), evenly spaced; the chunk after them is not read.
    np.testing.assert_array_equal(picked, np.concatenate([first.vectors, second.vectors])[[0, 1, 2, 4, 5]])
    assert calibration_vectors(iter([chunk(0, 0)]), 5).shape[0] == 0

    layout = SonifyLayout(str(tmp_path / "out"))
    base = {"uri": "u", "member": None, "width": 64, "height": 48, "format": "PNG", "num_bytes": 1}
    rows = [
        {**base, "image_id": f"i{k}", "vlm": "mapped", "concepts": [{"label": "mapped", "text": None, "vector": v}]}
        for k, v in enumerate(second.vectors)
    ]
    storage.write_parquet(layout.scenes("mapped", "000000"), pa.Table.from_pylist(rows, schema=SCENES))
    ids = [f"clip-{i}" for i in range(8)]
    clips = {name: [None] * 8 for name in MIX_CLIPS.names}
    clips |= {"clip_id": ids, "recording": ids, "lufs": [-20.0] * 8, "part": ["p"] * 8}
    clips |= {"audio_offset": [0] * 8, "audio_bytes": [1] * 8, "generated": [False] * 8}
    storage.write_parquet(layout.mix_clips(), make_table(MIX_CLIPS, clips))
    stage = RetrieveChunks(
        PoolLayout(str(tmp_path / "pool")),
        layout,
        ["mapped"],
        ClapConfig(model="unused"),
        RetrievalConfig(search_k=3, calibration_queries=10),
    )
    stage.index = build_index(clip_vectors(), IndexConfig(kind="hnsw"))
    stage.clip_ids = np.array(ids, dtype=object)
    stage.limit_to_usable_clips()
    calibration = stage.calibrate()
    assert calibration is not None and calibration.sample_size == 4
