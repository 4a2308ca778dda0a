"""Planning as pure functions: one chunk's scenes, its matches and the pool's mixable clips in,
shard plans, rejected rows and counts out. No Ray, no model."""

import json

import numpy as np
import pyarrow as pa
import pytest

from pipelines.config import validate_config
from pipelines.sonify.plans import number_shards
from schemas import IMAGE_CREDITS, MATCHES, MIX_CLIPS, SCENES, make_table
from schemas.layout import SonifyLayout
from stages.io import storage
from stages.pairing.plan_stage import PlanChunks, plans_table
from stages.pairing.planning import clip_locations, mixable_clips, plan_chunk, sample_key, shard_groups
from stages.search.search_stage import concept_texts, search_table

TEXTS = ["rain on a roof", "a dog barking", "wind in trees", "a crackling fire"]


def config(**sonify):
    return validate_config(
        {
            "seed": 7,
            "pool": {"dir": "/unused"},
            "models": {
                "clap": {"model": "unused"},
                "vlm": [{"name": "given", "backend": "provided", "path": "/unused.jsonl"}],
            },
            "sonify": {"images": ["/unused/*.jpg"], "out": "/unused-out", **sonify},
            "retrieval": {"search_k": 8, "k": 3},
        }
    )


def scenes(rows: list[dict]) -> pa.Table:
    base = {name: None for name in SCENES.names}
    filled = [
        base
        | {
            "uri": f"/images/{r['image_id']}.jpg",
            "vlm": "given",
            "format": "JPEG",
            "width": 64,
            "height": 64,
            "num_bytes": 5000,
            "dropped_empty_concepts": 0,
        }
        | r
        for r in rows
    ]
    return pa.Table.from_pylist(filled, schema=SCENES)


def concepts(*texts: str) -> list[dict]:
    return [{"label": t.split()[-1], "text": t} for t in texts]


def matches_of(texts: list[str], clips: int = 8, seed: int = 0) -> pa.Table:
    """Each text's neighbours: `clips` of the 24 pool clips with descending cosines."""
    rng = np.random.default_rng(seed)
    ids, scores = [], []
    for _ in texts:
        ids.append([f"clip-{i:02d}" for i in rng.choice(24, size=clips, replace=False)])
        scores.append(np.sort(rng.uniform(0.1, 0.6, clips))[::-1].astype(np.float32))
    keys = {"text": texts, "mapper": [None] * len(texts), "image_id": [None] * len(texts)}
    return make_table(MATCHES, keys | {"clip_ids": ids, "scores": scores, "corrected": [None] * len(texts)})


def pool_clips(inaudible: set[str] = frozenset()) -> pa.Table:
    ids = [f"clip-{i:02d}" for i in range(24) if f"clip-{i:02d}" not in inaudible]
    return make_table(
        MIX_CLIPS,
        {
            "clip_id": ids,
            # Three clips per source recording.
            "recording": [f"recording-{int(c[-2:]) // 3}" for c in ids],
            "lufs": [-20.0 - int(c[-2:]) / 4 for c in ids],
            "part": [f"part-{int(c[-2:]) // 8}" for c in ids],
            "audio_offset": [512 + 20_000 * (int(c[-2:]) % 8) for c in ids],
            "audio_bytes": [19_000 + int(c[-2:]) for c in ids],
            # Even clips are CC-BY-4.0 by an author named after them, odd ones have no licence.
            "license": ["CC-BY-4.0" if int(c[-2:]) % 2 == 0 else None for c in ids],
            "attribution": [f"author of {c}" if int(c[-2:]) % 2 == 0 else None for c in ids],
            "source_url": [f"https://example.org/{c}" if int(c[-2:]) % 2 == 0 else None for c in ids],
            "title": [f"title of {c}" if int(c[-2:]) % 2 == 0 else None for c in ids],
            "generated": [False] * len(ids),
        },
    )


def chunk_scenes(images: int = 12) -> pa.Table:
    rows = [
        {"image_id": f"img-{i:03d}", "caption": f"scene {i}", "concepts": concepts(*TEXTS[: 1 + i % 4])}
        for i in range(images)
    ]
    rows.append(
        {
            "image_id": "broken",
            "error": "/images/broken.jpg: cannot decode",
            "error_kind": "undecodable",
            "error_stage": "images",
        }
    )
    rows.append({"image_id": "tiny", "dropped": "too_small"})
    return scenes(rows)


def test_a_chunk_plan_is_reproducible_and_independent_of_scene_order():
    scene_table = chunk_scenes()
    first = plan_chunk(config(), scene_table, matches_of(TEXTS), pool_clips())
    shuffled = scene_table.take(np.random.default_rng(3).permutation(scene_table.num_rows))
    again = plan_chunk(config(), shuffled, matches_of(TEXTS), pool_clips())
    assert [s.to_pylist() for s in first.shards] == [s.to_pylist() for s in again.shards]
    assert sorted(first.rejected.column("key").to_pylist()) == sorted(again.rejected.column("key").to_pylist())
    assert first.stats == {**again.stats, "rejection_reasons": first.stats["rejection_reasons"]}
    assert (
        first.stats["samples"] == 12
        and first.stats["rejected"] == 2
        and first.stats["shards"] == len(first.shards) == 1
    )


def test_planned_rows_choose_among_matches_with_gains_from_the_pool_loudness():
    matches = matches_of(TEXTS)
    neighbours = dict(zip(matches.column("text").to_pylist(), matches.column("clip_ids").to_pylist()))
    pool = pool_clips()
    lufs = dict(zip(pool.column("clip_id").to_pylist(), pool.column("lufs").to_pylist()))
    plan = plan_chunk(config(), chunk_scenes(), matches, pool)
    rows = plan.shards[0].to_pylist()
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    for row in rows:
        chosen = [c["clip_id"] for c in row["concepts"]]
        assert len(set(chosen)) == len(chosen), "a clip was used twice in one sample"
        for concept, location in zip(row["concepts"], row["clip_locations"]):
            assert concept["clip_id"] in neighbours[concept["text"]]
            assert concept["clip_lufs"] == lufs[concept["clip_id"]]
            assert concept["gain_db"] == pytest.approx(concept["target_lufs"] - concept["clip_lufs"])
            assert -27.0 <= concept["target_lufs"] <= -23.0
            number = int(concept["clip_id"][-2:])
            assert location == {
                "part": f"part-{number // 8}",
                "offset": 512 + 20_000 * (number % 8),
                "size": 19_000 + number,
            }
        assert all(row[c] is None for c in ("mix_lufs", "shard", "error"))


def test_rejected_scenes_keep_their_reason_and_kind():
    plan = plan_chunk(config(), chunk_scenes(), matches_of(TEXTS), pool_clips())
    rejected = {r["image_id"]: r for r in plan.rejected.to_pylist()}
    assert rejected["broken"]["error_kind"] == "undecodable" and "cannot decode" in rejected["broken"]["error"]
    assert rejected["tiny"]["error_kind"] == "too_small" and rejected["tiny"]["error"] == "dropped: too_small"


def test_inaudible_clips_are_never_chosen_and_a_concept_without_any_is_counted():
    matches = matches_of(TEXTS)
    everything_fire_has = set(matches.column("clip_ids").to_pylist()[3])
    plan = plan_chunk(config(), chunk_scenes(), matches, pool_clips(inaudible=everything_fire_has))
    chosen = {c["clip_id"] for s in plan.shards for row in s.to_pylist() for c in row["concepts"]}
    assert not chosen & everything_fire_has
    # Images 3, 7 and 11 have the fire concept: each loses it and keeps its other three.
    assert plan.stats["concepts_no_usable_clip"] == 3


def test_a_scene_with_no_usable_concept_is_rejected_as_no_usable_clip():
    table = scenes([{"image_id": "quiet", "concepts": concepts("a crackling fire")}])
    matches = matches_of(["a crackling fire"])
    plan = plan_chunk(config(), table, matches, pool_clips(inaudible=set(matches.column("clip_ids").to_pylist()[0])))
    assert plan.shards == [] and plan.rejected.column("error_kind").to_pylist() == ["no_usable_clip"]


def test_shards_are_cut_by_size_in_key_order_and_numbered_within_the_chunk():
    cfg = config(shard_size_mb=0.5)
    samples = [{"key": f"k{i:02d}", "split": None} for i in range(10)]
    # 100 kB images plus a 5 s mix at 16 kHz (96 kB estimated): 2 samples per 0.5 MB shard.
    groups = shard_groups(samples, {s["key"]: 100_000 for s in samples}, cfg)
    assert [[s["key"] for s in g] for g in groups] == [[f"k{i:02d}", f"k{i + 1:02d}"] for i in range(0, 10, 2)]
    assert shard_groups([], {}, cfg) == []


def test_with_splits_each_shard_holds_one_split_in_key_order():
    cfg = config(shard_size_mb=0.5, splits={"train": 0.5, "test": 0.5})
    samples = [{"key": f"k{i:02d}", "split": "test" if i in (1, 4, 5) else "train"} for i in range(10)]
    groups = shard_groups(samples, {s["key"]: 100_000 for s in samples}, cfg)
    assert [[s["key"] for s in g] for g in groups] == [
        ["k00", "k02"],
        ["k03", "k06"],
        ["k07", "k08"],
        ["k09"],
        ["k01", "k04"],
        ["k05"],
    ]


def test_mixable_clips_returns_only_the_clips_asked_for_that_the_pool_can_mix():
    pool = pool_clips(inaudible={"clip-03"})
    found = mixable_clips(pool, ["clip-01", "clip-03", "clip-01", "not-in-pool"])
    assert found.lufs == {"clip-01": -20.25}
    assert found.locations == {"clip-01": ("part-0", 20_512, 19_001)}


def test_render_locates_every_clip_a_manifest_names_audible_or_not():
    def at(rate, lufs, offset):
        return {
            "sample_rate": rate,
            "lufs": lufs,
            "peak_dbfs": -1.0,
            "audio_offset": offset,
            "audio_bytes": 900,
        }

    clips = pa.Table.from_pylist(
        [
            {"clip_id": "loud", "part": "p1", "loudness_at_rates": [at(16000, -20.0, 512), at(22050, -20.0, 4096)]},
            {"clip_id": "hiss", "part": "p2", "loudness_at_rates": [at(16000, None, 1536)]},
            {"clip_id": "other", "part": "p2", "loudness_at_rates": [at(22050, -30.0, 512)]},
        ]
    )
    assert clip_locations(clips, 16000, ["loud", "hiss", "other", "gone"]) == {
        "loud": ("p1", 512, 900),
        "hiss": ("p2", 1536, 900),
    }
    assert clip_locations(clips, 22050, ["loud"]) == {"loud": ("p1", 4096, 900)}


def test_concept_texts_are_the_distinct_texts_of_scenes_that_go_on_to_retrieval():
    table = chunk_scenes()
    table = pa.concat_tables(
        [table, scenes([{"image_id": "dropped", "dropped": "non_sonic", "concepts": concepts("silence itself")}])]
    )
    assert concept_texts(table) == sorted(TEXTS)
    assert concept_texts(scenes([{"image_id": "x", "dropped": "no_concepts", "concepts": []}])) == []


def test_sample_keys_of_one_chunk_do_not_depend_on_the_other_chunks():
    whole = plan_chunk(config(), chunk_scenes(12), matches_of(TEXTS), pool_clips())
    part = plan_chunk(
        config(),
        scenes([r for r in chunk_scenes(12).to_pylist() if r["image_id"] == "img-005"]),
        matches_of(TEXTS),
        pool_clips(),
    )
    by_key = {r["key"]: r for r in whole.shards[0].to_pylist()}
    (row,) = part.shards[0].to_pylist()
    assert row == by_key[sample_key("img-005", "given")]
    assert json.dumps(row, sort_keys=True) == json.dumps(by_key[row["key"]], sort_keys=True)


def test_the_cap_holds_over_the_chunk_whatever_the_scene_order():
    capped = config().model_copy(deep=True)
    capped.retrieval.max_uses_per_clip = 1
    scene_table = chunk_scenes()
    first = plan_chunk(capped, scene_table, matches_of(TEXTS), pool_clips())
    shuffled = scene_table.take(np.random.default_rng(5).permutation(scene_table.num_rows))
    again = plan_chunk(capped, shuffled, matches_of(TEXTS), pool_clips())
    assert [s.to_pylist() for s in first.shards] == [s.to_pylist() for s in again.shards]
    chosen = [c["clip_id"] for shard in first.shards for row in shard.to_pylist() for c in row["concepts"]]
    assert len(chosen) == len(set(chosen)), "a clip was chosen twice in the chunk"
    # 30 concepts over 24 clips: the cap must drop some, and says so.
    concepts_asked = sum(1 + i % 4 for i in range(12))
    assert first.stats["concepts_clip_cap"] == concepts_asked - len(chosen) > 0


def test_corrected_scores_rank_and_the_manifest_keeps_both():
    matches = matches_of(TEXTS)
    raw = matches.column("scores").to_pylist()
    # The best raw neighbour of every text pays 0.3: its corrected score drops to the end.
    corrected = [[s - 0.3 if i == 0 else s for i, s in enumerate(row)] for row in raw]
    order = [list(np.argsort(-np.array(c), kind="stable")) for c in corrected]
    reordered = make_table(
        MATCHES,
        {
            "text": TEXTS,
            "mapper": [None] * len(TEXTS),
            "image_id": [None] * len(TEXTS),
            "clip_ids": [[ids[i] for i in o] for ids, o in zip(matches.column("clip_ids").to_pylist(), order)],
            "scores": [np.float32([r[i] for i in o]) for r, o in zip(raw, order)],
            "corrected": [np.float32([c[i] for i in o]) for c, o in zip(corrected, order)],
        },
    )
    by_clip = {
        (t, ids[i]): (r[i], c[i])
        for t, ids, r, c in zip(TEXTS, matches.column("clip_ids").to_pylist(), raw, corrected)
        for i in range(len(ids))
    }
    plan = plan_chunk(config(), chunk_scenes(), reordered, pool_clips())
    best = {t: ids[0] for t, ids in zip(TEXTS, matches.column("clip_ids").to_pylist())}
    concepts_planned = [c for shard in plan.shards for row in shard.to_pylist() for c in row["concepts"]]
    for concept in concepts_planned:
        cosine, score = by_clip[(concept["text"], concept["clip_id"])]
        assert concept["cosine"] == pytest.approx(cosine, abs=1e-6)
        assert concept["corrected_cosine"] == pytest.approx(score, abs=1e-6)
    assert not any(c["clip_id"] == best[c["text"]] for c in concepts_planned), "the penalized clip left C"


def test_the_plan_stage_returns_a_row_describing_the_files_it_wrote(tmp_path):
    layout = SonifyLayout(str(tmp_path / "out"))
    chunk = "000003"
    storage.write_parquet(layout.scenes("given", chunk), chunk_scenes())
    storage.write_parquet(layout.matches(chunk), matches_of(TEXTS))
    storage.write_parquet(layout.mix_clips(), pool_clips())
    storage.write_parquet(layout.image_credits(), IMAGE_CREDITS.empty_table())
    search = {
        "chunk": chunk,
        "matches_url": layout.matches(chunk),
        "texts": 4,
        "mapped_queries": 0,
        "setting": 8,
        "calibration_recall": 0.97,
        "calibration_queries": 64,
        "recall_k": 10,
        "recall": 0.95,
        "recall_queries": 4,
        "hubness_widest_search": None,
    }
    stage = PlanChunks(layout, config(shard_size_mb=0.5))
    stage.setup()
    [row] = stage.process_batch(search_table([search])).to_pylist()

    # The search row is carried through; the plan columns are what the chunk's files hold.
    assert {k: row[k] for k in search} == search
    stats = json.loads(storage.read_bytes(layout.chunk_plan(chunk)))
    assert {k: row[k] for k in stats} == stats
    assert row["shards"] > 1 and row["samples"] == 12 and row["rejected"] == 2
    assert row["shard_plan_urls"] == sorted(storage.list_files(layout.plans_folder(), ".parquet"))
    assert sum(storage.read_parquet(url).num_rows for url in row["shard_plan_urls"]) == row["samples"]
    assert storage.read_parquet(row["rejected_url"]).num_rows == row["rejected"]

    # A chunk planned before is not planned again (its matches are gone): its row is read back.
    (tmp_path / "out" / "matches" / f"{chunk}.parquet").unlink()
    assert stage.process_batch(search_table([search])).to_pylist() == [row]
    assert number_shards(plans_table([row, {**row, "chunk": "000004"}]))[0].column("plan_url").to_pylist() == (
        row["shard_plan_urls"] * 2
    )


def test_each_concept_carries_its_clips_credit_and_each_row_its_images():
    credits = make_table(
        IMAGE_CREDITS,
        {
            "image_id": ["img-001", "not-in-chunk"],
            "image_license": ["CC-BY-SA-4.0", "CC0-1.0"],
            "image_attribution": ["a photographer", None],
            "image_source_url": ["https://example.org/img-001", None],
            "image_title": ["a street", None],
        },
    )
    plan = plan_chunk(config(), chunk_scenes(), matches_of(TEXTS), pool_clips(), credits)
    rows = [row for shard in plan.shards for row in shard.to_pylist()]
    concepts = [c for row in rows for c in row["concepts"]]
    assert {int(c["clip_id"][-2:]) % 2 for c in concepts} == {0, 1}, "the plan uses clips with and without credit"
    for concept in concepts:
        if int(concept["clip_id"][-2:]) % 2 == 0:
            assert concept["license"] == "CC-BY-4.0"
            assert concept["attribution"] == f"author of {concept['clip_id']}"
            assert concept["source_url"] == f"https://example.org/{concept['clip_id']}"
            assert concept["title"] == f"title of {concept['clip_id']}"
        else:
            assert [concept[k] for k in ("license", "attribution", "source_url", "title")] == [None] * 4
    by_image = {row["image_id"]: row for row in rows}
    assert by_image["img-001"]["image_license"] == "CC-BY-SA-4.0"
    assert by_image["img-001"]["image_attribution"] == "a photographer"
    assert by_image["img-001"]["image_title"] == "a street"
    assert all(row["image_license"] is None for image_id, row in by_image.items() if image_id != "img-001")


def test_dropped_concepts_are_listed_per_row_and_the_missing_texts_per_chunk():
    matches = matches_of(TEXTS)
    # Every neighbour scores 0.1 or more, but those of "a dog barking" a tenth of that: under the
    # floor, a sound the pool lacks.
    scores = matches.column("scores").to_pylist()
    scores[1] = [s / 10 for s in scores[1]]
    matches = matches.set_column(
        matches.schema.get_field_index("scores"), "scores", pa.array(scores, matches.schema.field("scores").type)
    )
    dog_best = max(scores[1])
    fire_clips = matches.column("clip_ids").to_pylist()[3]
    floored = config().model_copy(deep=True)
    floored.retrieval.min_cosine = 0.1
    plan = plan_chunk(floored, chunk_scenes(), matches, pool_clips(inaudible=set(fire_clips)))
    rows = [row for shard in plan.shards for row in shard.to_pylist()] + plan.rejected.to_pylist()
    dropped = {(r["image_id"], d["text"]): d for r in rows for d in r["dropped"]}
    dog_images = [f"img-{i:03d}" for i in range(12) if i % 4 >= 1]
    fire_images = [f"img-{i:03d}" for i in range(12) if i % 4 == 3]
    assert sorted(dropped) == sorted(
        [(i, "a dog barking") for i in dog_images] + [(i, "a crackling fire") for i in fire_images]
    )
    assert {d["reason"] for (_, text), d in dropped.items() if text == "a dog barking"} == {"below_min_cosine"}
    assert {d["reason"] for (_, text), d in dropped.items() if text == "a crackling fire"} == {"no_usable_clip"}
    assert all(r["dropped_concepts"] == len(r["dropped"]) for r in rows if r["concepts"] or r["dropped"])

    missing = {row["text"]: row for row in plan.missing.to_pylist()}
    assert sorted(missing) == ["a crackling fire", "a dog barking"]
    dog, fire = missing["a dog barking"], missing["a crackling fire"]
    assert (dog["requests"], dog["below_min_cosine"], dog["no_usable_clip"]) == (len(dog_images), len(dog_images), 0)
    assert (fire["requests"], fire["below_min_cosine"], fire["no_usable_clip"]) == (3, 0, 3)
    assert dog["best_cosine"] == pytest.approx(dog_best)
    assert fire["best_cosine"] == pytest.approx(max(matches.column("scores").to_pylist()[3]))
    assert [e["image_id"] for e in dog["examples"]] == dog_images[:3]
    assert [e["image_uri"] for e in fire["examples"]] == [f"/images/{i}.jpg" for i in fire_images]


def test_concepts_the_cap_drops_are_not_missing_sounds():
    capped = config().model_copy(deep=True)
    capped.retrieval.max_uses_per_clip = 1
    plan = plan_chunk(capped, chunk_scenes(), matches_of(TEXTS), pool_clips())
    reasons = {d["reason"] for s in plan.shards for row in s.to_pylist() for d in row["dropped"]}
    assert reasons == {"clip_cap"}
    assert plan.missing.num_rows == 0
