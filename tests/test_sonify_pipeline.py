"""Sonify end to end through Ray with the tiny Qwen2.5-VL (transformers backend) and a provided
concepts file as a second VLM, checked with independent readers: the webdataset library for the
shards, DuckDB for the manifest, libebur128 for the loudness of the decoded FLAC."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.report import sonify_report
from pipelines.sonify import SonifyError, run_render, run_sonify
from stages.audio.packs import decode_flac
from tests.helpers import noise, tone, write_audio
from tests.test_loudness import ebur128_lufs


def picture(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sonify-inputs")
    audio = root / "audio"
    write_audio(audio / "a.wav", noise(12.0, 44100, 0.1, 1), 44100)
    write_audio(audio / "b.flac", tone(9.0, 48000, 500.0, 0.2), 48000, "FLAC")
    write_audio(audio / "c.ogg", noise(7.0, 22050, 0.3, 2) * tone(7.0, 22050, 3.0, 1.0), 22050, "OGG", "VORBIS")
    images = root / "images"
    images.mkdir()
    for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "JPEG"]):
        (images / f"photo {i}.{fmt.lower()}").write_bytes(encoded(picture(i), fmt))
    (images / "tiny.png").write_bytes(encoded(picture(9, (10, 10)), "PNG"))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with tarfile.open(root / "shard-a.tar", "w") as tar:
        for key in ("t1", "t2"):
            payload = encoded(picture(len(key) * 7 + int(key[1])), "JPEG")
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (root / "listed.png").write_bytes(encoded(picture(20), "PNG"))
    pq.write_table(pa.table({"uri": [str(root / "listed.png")], "image_id": ["from-list"]}), root / "list.parquet")
    provided = root / "concepts.jsonl"
    lines = [
        {"image_id": f"photo {i}", "caption": "a field", "concepts": [{"label": "wind", "text": "wind blowing"}]}
        for i in range(4)
    ]
    lines.append({"image_id": "t1", "caption": "a street sign", "concepts": [{"label": "car", "text": "a car"}]})
    lines.append({"image_id": "t2", "concepts": [{"label": "x", "text": ""}]})
    provided.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def make_config(inputs: Path, models: dict, out: Path, **overrides) -> object:
    tree = {
        "seed": 3,
        "pool": {"dir": str(inputs / "pool"), "sources": [str(inputs / "audio" / "*")]},
        "models": {
            "clap": {"backend": "transformers", "model": models["clap_transformers"], "batch_size": 8},
            "vlm": [
                {"name": "qwen", "backend": "transformers", "model": models["vlm_qwen2_5_vl"], "batch_size": 4},
                {"name": "given", "backend": "provided", "path": str(inputs / "concepts.jsonl")},
            ],
        },
        "sonify": {
            "images": [str(inputs / "images" / "*"), str(inputs / "shard-a.tar"), str(inputs / "list.parquet")],
            "out": str(out),
            "min_side": 32,
            "shard_size_mb": 0.05,
        },
        "prompt": {"max_new_tokens": 200, "max_concepts": 3, "max_text_chars": 20},
        "retrieval": {"search_k": 8, "k": 4, "min_cosine": -1.0},
    }
    for key, value in overrides.items():
        tree[key] = {**tree.get(key, {}), **value}
    return validate_config(tree)


@pytest.fixture(scope="module")
def run(inputs, tiny_models, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("sonified") / "out"
    config = make_config(inputs, tiny_models, out)
    run_pool(config)
    return config, out, run_sonify(config)


def test_summary_counts(run):
    _, out, summary = run
    assert summary["images"] == {
        "listed": 9,
        "renamed_duplicate_ids": 0,
        "errors": 1,
        "errors_by_kind": {"undecodable": 1},
        "too_small": 1,
    }
    # t2's only concept has empty text.
    assert summary["concepts_with_empty_text"] == 1
    given = summary["scenes"]["given"]
    # t1's caption names a sign (non-sonic), t2's only concept is empty, two images have no entry.
    assert given == {"ok": 4, "non_sonic": 1, "no_concepts": 1, "images_error": 1, "too_small": 1, "vlm_error": 1}
    assert sum(summary["scenes"]["qwen"].values()) == 9
    assert summary["samples"] == 4 + summary["scenes"]["qwen"].get("ok", 0)
    assert summary["samples"] + summary["rejected"] == 18
    assert summary["write_errors_by_kind"] == {}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert "prompt:" in (out / "config.yaml").read_text()


def test_exposure_numbers_match_the_manifest(run):
    _, out, summary = run
    rows = duckdb.sql(
        "SELECT c.clip_id, count(*) AS n FROM (SELECT unnest(concepts) AS c "
        f"FROM read_parquet('{out}/manifest/0*.parquet') WHERE error IS NULL) GROUP BY 1 ORDER BY n DESC"
    ).fetchall()
    exposure = summary["exposure"]
    assert exposure["distinct_clips"] == len(rows) == summary["distinct_clips_used"]
    assert exposure["max_uses_of_one_clip"] == rows[0][1]
    assert exposure["top_clips_share"] == pytest.approx(
        sum(n for _, n in rows[:20]) / sum(n for _, n in rows), abs=1e-6
    )
    hubness = json.loads((out / "hubness" / "hubness.json").read_text())
    assert exposure["pool_k_occurrence_skewness"] == pytest.approx(hubness["k_occurrence_skewness"], abs=1e-6)


def test_shards_read_back_with_webdataset(run, inputs):
    _, out, summary = run
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    assert len(shards) == summary["shards"] >= 2
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == summary["samples"]
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = [m.name.split(".", 1)[1] for m in tar]
        # Every sample of the dataset carries its image under one member name, whatever its source's format.
        assert set(members) == {"jpg", "flac", "json"}, members
    assert len({s["__key__"] for s in samples}) == len(samples)
    for sample in samples:
        meta = json.loads(sample["json"])
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.format == "JPEG"
            assert (
                image.size == (meta["width"], meta["height"]) == (meta["shard_image_width"], meta["shard_image_height"])
            )
            stored = np.asarray(image.convert("L"), dtype=float)
        if not meta["image_member"]:
            with Image.open(meta["image_uri"]) as source:
                # JPEG keeps luma at full resolution (colour is subsampled); another of these noise
                # pictures differs from it by about 55 on average.
                assert np.abs(stored - np.asarray(source.convert("L"), dtype=float)).mean() < 10
        audio, rate = decode_flac(sample["flac"])
        assert rate == 16000 and audio.shape == (80000,)
        clip_ids = [c["clip_id"] for c in meta["concepts"]]
        assert len(clip_ids) == len(set(clip_ids)) >= 1
        assert meta["shard"] == Path(sample["__url__"]).name


def test_manifest_through_duckdb(run):
    _, out, summary = run
    db = duckdb.connect()
    db.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{out}/manifest/*.parquet')")
    assert db.execute("SELECT count(*) FROM m WHERE error IS NULL").fetchone()[0] == summary["samples"]
    assert db.execute("SELECT count(DISTINCT key) = count(*) FROM m").fetchone()[0]
    assert db.execute("SELECT DISTINCT vlm FROM m ORDER BY 1").fetchall() == [("given",), ("qwen",)]
    assert db.execute("SELECT DISTINCT prompt_version FROM m").fetchall() == [("sounds-v1",)]
    rows = db.execute(
        "SELECT c.clip_id, coalesce(c.corrected_cosine, c.cosine), c.ssr, c.threshold, c.n_candidates, "
        "c.target_lufs, c.clip_lufs, c.gain_db FROM (SELECT unnest(concepts) AS c FROM m WHERE error IS NULL)"
    ).fetchall()
    # SSR runs on the score the neighbours are ranked by: the hubness-corrected one where there is one.
    for clip_id, score, ssr, threshold, n, target, clip_lufs, gain in rows:
        assert ssr == pytest.approx(np.sign(score) * np.sqrt(abs(score)))
        assert 1 <= n <= 4
        assert -27.0 <= target <= -23.0
        assert gain == pytest.approx(target - clip_lufs)
    reasons = dict(db.execute("SELECT key, error FROM m WHERE error IS NOT NULL AND vlm = 'given'").fetchall())
    assert any("dropped: non_sonic" == r for r in reasons.values())
    assert any("broken.jpg" in r for r in reasons.values())


def test_single_source_loudness_on_decoded_flac(run):
    _, out, _ = run
    samples = [s for s in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)]
    singles = [s for s in samples if len(json.loads(s["json"])["concepts"]) == 1]
    assert len(singles) >= 4
    for sample in singles:
        meta = json.loads(sample["json"])
        audio, rate = decode_flac(sample["flac"])
        expected = meta["concepts"][0]["target_lufs"] + meta["mix_gain_db"]
        assert ebur128_lufs(audio, rate) == pytest.approx(expected, abs=0.5)
        assert meta["mix_lufs"] == pytest.approx(expected, abs=0.05)


def test_render_is_bit_identical(run, tmp_path):
    config, out, _ = run
    rendered = tmp_path / "rendered"
    render_config = config.model_copy(
        update={"render": config.render.model_copy(update={"manifest": str(out / "manifest"), "out": str(rendered)})}
    )
    result = run_render(render_config)
    assert result["samples"] > 0
    for shard in sorted((out / "shards").glob("*.tar")):
        assert (rendered / "shards" / shard.name).read_bytes() == shard.read_bytes()


def test_same_config_twice_gives_identical_manifest(run, inputs, tiny_models, tmp_path):
    config, out, _ = run
    again = make_config(inputs, tiny_models, tmp_path / "again")
    run_sonify(again)
    first = duckdb.sql(
        f"SELECT * EXCLUDE (shard) FROM read_parquet('{out}/manifest/*.parquet') ORDER BY key"
    ).fetchall()
    second = duckdb.sql(
        f"SELECT * EXCLUDE (shard) FROM read_parquet('{tmp_path}/again/manifest/*.parquet') ORDER BY key"
    ).fetchall()
    assert first == second


def test_missing_pool_is_an_error_before_work(inputs, tiny_models, tmp_path):
    config = make_config(inputs, tiny_models, tmp_path / "x", pool={"dir": str(tmp_path / "no-pool")})
    with pytest.raises(SonifyError, match="holds no pool"):
        run_sonify(config)
    assert not (tmp_path / "x").exists()


def test_rerun_reuses_finished_work_and_refuses_other_settings(run, inputs, tiny_models):
    config, out, summary = run
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}

    def counts(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if k not in ("seconds", "wall_seconds")}

    again = run_sonify(config)
    assert counts(again) == counts(summary)
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == before
    # A chunk searched but not planned is planned from the search row its stats file gives, and the
    # summary is the same whichever run did which work.
    (out / "plans" / "chunk-000000.json").unlink()
    assert counts(run_sonify(config)) == counts(summary)
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == before
    changed = make_config(inputs, tiny_models, out, retrieval={"search_k": 8, "k": 2, "min_cosine": -1.0})
    with pytest.raises(SonifyError, match="holds a run made with other settings"):
        run_sonify(changed)


def test_missing_sounds_list_what_the_manifest_dropped_and_regroup_alone(run, inputs, tiny_models, tmp_path):
    _, out, _ = run
    db = duckdb.connect()
    # A floor at the median cosine of the first run's choices: about half its concepts find no clip.
    floor = db.execute(
        f"SELECT median(c.cosine) FROM (SELECT unnest(concepts) AS c FROM read_parquet('{out}/manifest/0*.parquet'))"
    ).fetchone()[0]
    floored_out = tmp_path / "floored"
    retrieval = {"search_k": 8, "k": 4, "min_cosine": floor}
    summary = run_sonify(make_config(inputs, tiny_models, floored_out, retrieval=retrieval))

    dropped = db.execute(
        "SELECT d.text, count(*), max(d.best_cosine) FROM (SELECT unnest(dropped) AS d "
        f"FROM read_parquet('{floored_out}/manifest/*.parquet')) "
        "WHERE d.reason IN ('below_min_cosine', 'no_usable_clip') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    listed = db.execute(
        f"SELECT text, requests, best_cosine FROM read_parquet('{floored_out}/missing_sound_texts.parquet') ORDER BY 1"
    ).fetchall()
    assert dropped and [(t, n) for t, n, _ in listed] == [(t, n) for t, n, _ in dropped]
    assert [b for _, _, b in listed] == pytest.approx([b for _, _, b in dropped])
    assert all(best < floor for _, _, best in listed)
    groups = db.execute(
        f"SELECT count(*), sum(requests), sum(texts) FROM read_parquet('{floored_out}/missing_sounds.parquet')"
    ).fetchone()
    requests = sum(n for _, n, _ in listed)
    assert summary["missing_sounds"] == {"texts": len(listed), "groups": groups[0], "requests": requests}
    assert groups[1:] == (requests, len(listed))
    assert summary["concepts_below_min_cosine"] + summary["concepts_without_usable_clip"] == requests

    # Other grouping settings regroup the list on the next run and touch nothing else.
    manifest = {p.name: p.stat().st_mtime_ns for p in (floored_out / "manifest").iterdir()}
    regrouped = make_config(
        inputs, tiny_models, floored_out, retrieval=retrieval, sonify={"missing_sounds": {"group_cosine": -1.0}}
    )
    again = run_sonify(regrouped)
    assert again["missing_sounds"] == {"texts": len(listed), "groups": 1, "requests": requests}
    assert {p.name: p.stat().st_mtime_ns for p in (floored_out / "manifest").iterdir()} == manifest
    [(text, member_texts)] = db.execute(
        f"SELECT text, member_texts FROM read_parquet('{floored_out}/missing_sounds.parquet')"
    ).fetchall()
    most_requested = max(listed, key=lambda row: (row[1], [-ord(ch) for ch in row[0]]))
    assert text == member_texts[0] == most_requested[0]

    page = (Path(sonify_report(regrouped).removeprefix("file://"))).read_text()
    assert 'id="missing-sounds"' in page and f"{requests} concepts asked for {len(listed)} texts" in page
