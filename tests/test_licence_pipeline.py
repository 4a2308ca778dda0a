"""Licences and splits through both pipelines, on Ray with the tiny models: a pool of sources under
mixed licences (from a metadata CSV, one source with a variant, one without metadata), sonified
with `deny: [CC-BY-NC-*]` and three splits that keep their recordings apart; no denied clip is
used, every used clip that needs a credit is credited once in ATTRIBUTION.csv, no clip or recording
is heard in two splits, `datasets.load_dataset` reads the three splits from the run folder alone,
and a metadata change rewrites only the clips files."""

from __future__ import annotations

import csv
import json

import duckdb
import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.sonify import run_sonify
from tests.helpers import noise, tone, write_audio

# file -> the licence as the metadata spells it (None: the file has no metadata row), and its id.
SOURCES = {
    "rain.wav": ("Creative Commons Attribution 4.0", "CC-BY-4.0"),
    "dog.wav": ("http://creativecommons.org/licenses/by/3.0/", "CC-BY-3.0"),
    "engine.wav": ("cc-by-nc 3.0", "CC-BY-NC-3.0"),
    "birds.wav": ("https://creativecommons.org/licenses/by-nc/4.0/", "CC-BY-NC-4.0"),
    "wind.wav": ("CC0", "CC0-1.0"),
    "bell.wav": (None, None),
    # With these, each of the three splits owns an allowed recording (by the hash of its content):
    # tap.wav validation's, fan.wav and hiss.wav test's.
    "creek.wav": ("CC0", "CC0-1.0"),
    "fan.wav": ("CC0", "CC0-1.0"),
    "tap.wav": ("CC0", "CC0-1.0"),
    "hiss.wav": ("CC0", "CC0-1.0"),
}
DENIED = {"engine.wav", "birds.wav"}
# sonify.features, and the width of each with the tiny models.
FEATURE_DIMS = {"clap_audio": 512, "clip_image": 64, "ast": 32}
IMAGES = 12
SPLITS = {"train": 0.5, "validation": 0.25, "test": 0.25}


def metadata_csv(path, overrides: dict[str, str] | None = None) -> None:
    rows = [["source", "license", "attribution", "source_url", "title"]]
    for name, (spelling, _) in SOURCES.items():
        if spelling is not None:
            license = (overrides or {}).get(name, spelling)
            rows.append([name, license, f"author of {name}", f"https://example.org/{name}", f"title of {name}"])
    rows.append(["not-in-the-pool.wav", "CC0", "", "", ""])
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.fixture(scope="module")
def run(tiny_models, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("licences")
    for i, name in enumerate(SOURCES):
        write_audio(root / "audio" / name, tone(9.0, 16000, 180.0 + 150 * i, 0.3) + noise(9.0, 16000, 0.02, i), 16000)
    metadata_csv(root / "sounds.csv")
    (root / "images").mkdir()
    lines = []
    for i in range(IMAGES):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(root / "images" / f"img-{i:02d}.png")
        concepts = [{"label": "x", "text": f"sound {j} of image {i}"} for j in range(3)]
        lines.append(json.dumps({"image_id": f"img-{i:02d}", "concepts": concepts}))
    (root / "concepts.jsonl").write_text("\n".join(lines) + "\n")
    (root / "images.csv").write_text(
        "image,license,attribution,source_url,title\n"
        "img-00,CC BY-SA 4.0,a photographer,https://example.org/img-00,a grey square\n"
        "img-01,CC0,,,\n"
    )
    config = validate_config(
        {
            "seed": 5,
            "pool": {
                "dir": str(root / "pool"),
                "sources": [str(root / "audio" / "*.wav")],
                "sample_rate": 16000,
                "files_per_part": 2,
                "metadata": [str(root / "sounds.csv")],
                "variants": [{"name": "muffled", "sources": ["*/engine.wav"], "chain": [{"effect": "LowpassFilter"}]}],
            },
            "models": {
                "clap": {
                    "backend": "transformers",
                    "model": tiny_models["clap_transformers"],
                    "batch_size": 4,
                    "num_cpus": 0.25,
                },
                # The feature actors hold 0.75 of the 2 CPUs, so that the mixing tasks have one.
                "clip": {"model": tiny_models["clip"], "batch_size": 4, "num_cpus": 0.25},
                "ast": {"model": tiny_models["ast"], "batch_size": 4, "num_cpus": 0.25},
                "vlm": [
                    {"name": "given", "backend": "provided", "path": str(root / "concepts.jsonl"), "batch_size": 4}
                ],
            },
            "sonify": {
                "images": [str(root / "images" / "*.png")],
                "out": str(root / "out"),
                "min_side": 16,
                "images_per_chunk": 4,
                "licenses": {"deny": ["CC-BY-NC-*"]},
                "splits": SPLITS,
                "split_by_clip": True,
                "image_metadata": [str(root / "images.csv")],
                "features": list(FEATURE_DIMS),
            },
            "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0, "hubness": "none"},
        }
    )
    pool_summary = run_pool(config)
    return config, root, pool_summary, run_sonify(config)


def pool_clips(root) -> list[tuple]:
    return (
        duckdb.connect()
        .execute(
            f"SELECT clip_id, source_uri, variant, license, license_raw, attribution, source_url, title "
            f"FROM read_parquet('{root}/pool/clips/*.parquet') WHERE error IS NULL ORDER BY clip_id"
        )
        .fetchall()
    )


def file_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def test_the_clips_table_carries_each_sources_licence_and_variants_inherit_it(run):
    _, root, summary, _ = run
    clips = pool_clips(root)
    for clip_id, uri, variant, license, raw, attribution, url, title in clips:
        spelling, expected = SOURCES[file_of(uri)]
        assert (license, raw) == (expected, spelling), clip_id
        if spelling is None:
            assert (attribution, url, title) == (None, None, None)
        else:
            assert (attribution, url, title) == (
                f"author of {file_of(uri)}",
                f"https://example.org/{file_of(uri)}",
                f"title of {file_of(uri)}",
            )
    variants = [c for c in clips if c[2] == "muffled"]
    assert variants and all(c[3] == "CC-BY-NC-3.0" for c in variants)
    by_license: dict[str, int] = {}
    for clip in clips:
        if clip[3] is not None:
            by_license[clip[3]] = by_license.get(clip[3], 0) + 1
    assert summary["pool"]["clips_by_license"] == dict(sorted(by_license.items()))
    assert summary["pool"]["clips_without_license"] == sum(1 for c in clips if file_of(c[1]) == "bell.wav") > 0
    assert summary["metadata_keys_unmatched"] == 1


def test_no_denied_clip_is_used_and_every_used_clip_needing_credit_is_credited_once(run):
    _, root, _, summary = run
    db = duckdb.connect()
    used = db.execute(
        f"SELECT DISTINCT c.clip_id, p.source_uri, c.license, c.attribution FROM "
        f"(SELECT unnest(concepts) AS c FROM read_parquet('{root}/out/manifest/*.parquet') WHERE error IS NULL) "
        f"JOIN read_parquet('{root}/pool/clips/*.parquet') p ON p.clip_id = c.clip_id"
    ).fetchall()
    assert summary["samples"] > 0 and used
    assert not [u for u in used if file_of(u[1]) in DENIED]
    for clip_id, uri, license, attribution in used:
        assert license == SOURCES[file_of(uri)][1], clip_id
    credited_sources = {"rain.wav", "dog.wav"}
    needing = {u[0] for u in used if file_of(u[1]) in credited_sources}
    assert needing, "the run must use some CC-BY clip for this test to mean anything"

    rows = db.execute(
        f"SELECT kind, id, title, author, license, source_url FROM '{root}/out/ATTRIBUTION.csv'"
    ).fetchall()
    audio = [r for r in rows if r[0] == "audio"]
    assert sorted(r[1] for r in audio) == sorted(needing)
    for _, clip_id, title, author, license, url in audio:
        name = next(file_of(u[1]) for u in used if u[0] == clip_id)
        assert (title, author, license, url) == (
            f"title of {name}",
            f"author of {name}",
            SOURCES[name][1],
            f"https://example.org/{name}",
        )
    assert [r for r in rows if r[0] == "image"] == [
        ("image", "img-00", "a grey square", "a photographer", "CC-BY-SA-4.0", "https://example.org/img-00")
    ]
    card = (root / "out" / "README.md").read_text().split("---\n")[1]
    card_licenses = yaml.safe_load(card)["license"]
    assert {"cc-by-sa-4.0", "cc0-1.0", "unknown"} <= set(card_licenses)
    assert not [name for name in card_licenses if "-nc" in name]
    page = (root / "out" / "ATTRIBUTION.md").read_text()
    assert all(f"`{clip_id}`" in page for clip_id in needing)

    audible_denied = db.execute(
        f"SELECT license, count(*) FROM read_parquet('{root}/pool/clips/*.parquet') "
        "WHERE error IS NULL AND NOT silent AND license LIKE 'CC-BY-NC-%' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert summary["pool_clips_denied_by_license"] == dict(audible_denied)
    # The search itself skips denied clips: every concept finds an allowed one, none is dropped for want of it.
    assert summary["concepts_without_usable_clip"] == 0 and summary["rejected"] == 0
    assert set(summary["clips_used_by_license"]) <= {"CC-BY-4.0", "CC-BY-3.0", "CC0-1.0", "unknown"}
    assert summary["attribution"]["clips_credited"] == len(needing)
    assert summary["attribution"]["images_credited"] == 1


def test_no_clip_or_recording_is_heard_in_two_splits_and_loaders_read_every_split(run, tmp_path):
    from tests.test_readers import rows_read_with_datasets

    _, root, _, summary = run
    db = duckdb.connect()
    used = db.execute(
        "SELECT m.split, c.clip_id, p.source_sha256 FROM (SELECT split, unnest(concepts) AS c "
        f"FROM read_parquet('{root}/out/manifest/*.parquet') WHERE error IS NULL) m "
        f"JOIN read_parquet('{root}/pool/clips/*.parquet') p ON p.clip_id = m.c.clip_id"
    ).fetchall()
    assert {split for split, _, _ in used} == set(SPLITS)
    for position in (1, 2):
        owners: dict[str, set[str]] = {}
        for row in used:
            owners.setdefault(row[position], set()).add(row[0])
        assert all(len(splits) == 1 for splits in owners.values()), owners

    rows = rows_read_with_datasets(root / "out", tmp_path)
    for split in SPLITS:
        assert sum(r["split"] == split for r in rows) == summary["splits"]["samples"][split] > 0
    assert all(r["image_size"] == [40, 40] and r["audio_shape"][1] > 0 for r in rows)
    assert {r["split"] for r in rows} == {r["metadata"]["split"] for r in rows} == set(SPLITS)
    # Every sample's embeddings, as the card declares them and as webdataset reads the tar members.
    assert {name: model["dim"] for name, model in summary["features"].items()} == FEATURE_DIMS
    stored = {
        sample["__key__"]: sample
        for tar in sorted((root / "out" / "shards").glob("*.tar"))
        for sample in wds.WebDataset(str(tar), shardshuffle=False).decode()
    }
    assert sorted(stored) == sorted(r["key"] for r in rows)
    for row in rows:
        assert {name: len(vector) for name, vector in row["features"].items()} == FEATURE_DIMS
        for name, vector in row["features"].items():
            np.testing.assert_array_equal(np.float32(vector), stored[row["key"]][f"{name}.npy"])
        for name in ("clap_audio", "clip_image"):
            assert np.linalg.norm(row["features"][name]) == pytest.approx(1.0, abs=1e-5)
    card = (root / "out" / "README.md").read_text()
    assert all(f"`{name}.npy` (float32, {dim})" in card for name, dim in FEATURE_DIMS.items())


def test_changed_metadata_rewrites_only_the_clips_files(run):
    config, root, _, _ = run
    kept = {
        p.relative_to(root / "pool"): p.stat().st_mtime_ns
        for p in (root / "pool").rglob("*")
        if p.is_file() and p.parts[-2] in ("embeddings", "audio", "index", "16000")
    }
    metadata_csv(root / "sounds.csv", {"wind.wav": "CC BY 4.0"})
    again = run_pool(config)
    assert again["files_processed"] == 0 and again["parts_relabelled"] == 1
    assert {
        p.relative_to(root / "pool"): p.stat().st_mtime_ns
        for p in (root / "pool").rglob("*")
        if p.is_file() and p.parts[-2] in ("embeddings", "audio", "index", "16000")
    } == kept
    wind = [c for c in pool_clips(root) if file_of(c[1]) == "wind.wav"]
    assert wind and all((c[3], c[4]) == ("CC-BY-4.0", "CC BY 4.0") for c in wind)


def test_render_writes_the_same_attribution_files(run):
    from pipelines.sonify import run_render

    config, root, _, _ = run
    rendered = root / "rendered"
    render = config.render.model_copy(update={"manifest": str(root / "out" / "manifest"), "out": str(rendered)})
    summary = run_render(config.model_copy(update={"render": render}))
    assert summary["samples"] > 0
    for name in ("ATTRIBUTION.csv", "ATTRIBUTION.md"):
        assert (rendered / name).read_bytes() == (root / "out" / name).read_bytes()
