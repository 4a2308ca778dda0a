"""The pool pipeline end to end through Ray, checked with independent readers: DuckDB over the
Parquet tables, libebur128 on the decoded clip audio, FAISS over the stored index."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pytest

from pipelines.config import validate_config
from pipelines.pool.index import update_index
from pipelines.pool.run import run_pool
from pipelines.pool.store import PoolMismatch, PoolStore
from pipelines.sonify.checks import SonifyError, check_pool
from schemas import embeddings_schema, make_table
from schemas.layout import PoolLayout
from stages.audio.mixing import ClipLocation, load_pool_clips
from stages.audio.packs import decode_flac
from stages.io import storage
from tests.helpers import noise, tone, write_audio
from tests.test_loudness import ebur128_lufs


def make_config(pool_dir: Path, sources: list[str], models: dict, **pool_overrides) -> object:
    return validate_config(
        {
            "pool": {"dir": str(pool_dir), "sources": sources, "files_per_part": 3, **pool_overrides},
            "models": {"clap": {"backend": "transformers", "model": models["clap_transformers"], "batch_size": 4}},
        }
    )


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every data file of a pool (run records excluded)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("summary.json", "config.yaml")
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("sources")
    write_audio(
        src / "long noise.wav", np.stack([noise(34.0, 44100, 0.1, 1), noise(34.0, 44100, 0.05, 2)], axis=1), 44100
    )
    write_audio(src / "short.flac", tone(2.0, 22050, 330.0), 22050, "FLAC", "PCM_24")
    write_audio(src / "engine.mp3", tone(12.0, 16000, 90.0, 0.4), 16000, "MP3", "MPEG_LAYER_III")
    write_audio(src / "birds.ogg", tone(7.0, 32000, 2500.0, 0.2), 32000, "OGG", "VORBIS")
    write_audio(src / "silence.wav", np.zeros(6 * 8000, np.float32), 8000)
    (src / "empty.wav").write_bytes(b"")
    (src / "notes.wav").write_text("not audio at all\n" * 10)
    return src


@pytest.fixture(scope="module")
def first_run(sources, tmp_path_factory, tiny_models, ray_session):
    pool_dir = tmp_path_factory.mktemp("pool") / "pool"
    patterns = [f"{sources}/*", str(sources / "missing.wav"), f"{sources}/*.aiff"]
    config = make_config(pool_dir, patterns, tiny_models)
    return pool_dir, patterns, config, run_pool(config)


def clips_db(pool_dir: Path) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute(f"CREATE VIEW clips AS SELECT * FROM read_parquet('{pool_dir}/clips/*.parquet')")
    return db


def test_first_run_summary(first_run):
    pool_dir, _, _, summary = first_run
    assert summary["files_listed"] == 8
    assert summary["files_processed"] == 8
    # 34 s -> 7, 2 s -> 1, 12 s -> 3, 7 s -> 2, 6 s of silence -> 2
    assert summary["clips_added"] == 15
    assert summary["silent_clips_added"] == 2
    assert summary["clips_embedded"] == 13
    assert summary["errors"] == 3
    assert summary["patterns_without_matches"] == [first_run[1][2]]
    assert summary["index"] == {**summary["index"], "kind": "flat", "size": 13, "action": "built"}
    assert json.loads((pool_dir / "summary.json").read_text()) == summary
    assert "sample_rate: 48000" in (pool_dir / "config.yaml").read_text()


def test_the_store_reads_what_the_run_built(first_run):
    """PoolStore on a pool the pipeline built agrees with the run's own summary, which counts the
    same things another way (audible loudness per clip, the index update's result)."""
    pool_dir, _, config, summary = first_run
    store = PoolStore.at(str(pool_dir))
    assert store.meta() == json.loads((pool_dir / "pool.json").read_text())
    assert store.summary() == summary
    assert store.index_is_current() and store.index_meta()["size"] == summary["index"]["size"]
    assert store.clips(["clip_id"]).num_rows == summary["clips_added"] + summary["errors"]
    for rate in config.pool.mix_sample_rates:
        clips, inaudible = store.mixable_clips(rate, config.pool.silence_lufs, config.pool.max_band_loss_lu)
        assert inaudible == summary["pool"]["inaudible_at_mix_rates"][str(rate)]
        assert clips.num_rows + inaudible == summary["clips_embedded"]


def test_pool_table_through_duckdb(first_run, sources):
    pool_dir = first_run[0]
    db = clips_db(pool_dir)
    per_file = dict(
        db.execute(
            "SELECT regexp_extract(source_uri, '[^/]+$'), count(*) FROM clips WHERE error IS NULL GROUP BY 1"
        ).fetchall()
    )
    assert per_file == {"long noise.wav": 7, "short.flac": 1, "engine.mp3": 3, "birds.ogg": 2, "silence.wav": 2}
    last = db.execute(
        "SELECT start_s, duration_s, sample_rate FROM clips "
        "WHERE source_uri LIKE '%long noise.wav' ORDER BY chunk_index DESC LIMIT 1"
    ).fetchone()
    assert last == (30.0, pytest.approx(4.0, abs=1e-3), 48000)
    assert db.execute("SELECT count(*) FROM clips WHERE silent AND error IS NULL").fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM clips WHERE silent AND lufs IS NOT NULL AND lufs > -70").fetchone()[0] == 0
    assert db.execute("SELECT count(DISTINCT clip_id) = count(*) FROM clips").fetchone()[0]
    errors = dict(
        db.execute("SELECT regexp_extract(source_uri, '[^/]+$'), error FROM clips WHERE error IS NOT NULL").fetchall()
    )
    assert set(errors) == {"empty.wav", "notes.wav", "missing.wav"}
    assert errors["empty.wav"] == f"{sources / 'empty.wav'}: empty file (0 bytes)"
    assert errors["notes.wav"].startswith(f"{sources / 'notes.wav'}: not decodable")
    assert errors["missing.wav"].startswith(f"{sources / 'missing.wav'}: cannot read")
    formats = dict(
        db.execute(
            "SELECT DISTINCT regexp_extract(source_uri, '[^/]+$'), source_format FROM clips WHERE error IS NULL"
        ).fetchall()
    )
    assert formats["engine.mp3"] == "MP3" and formats["birds.ogg"] == "OGG"


def test_stored_audio_loudness_and_embeddings(first_run):
    pool_dir = first_run[0]
    db = clips_db(pool_dir)
    rows = db.execute("SELECT clip_id, part, lufs, silent FROM clips WHERE error IS NULL").fetchall()
    audio = dict(db.execute(f"SELECT clip_id, flac FROM read_parquet('{pool_dir}/audio/*.parquet')").fetchall())
    assert set(audio) == {r[0] for r in rows}
    for clip_id, _, lufs, silent in rows:
        decoded, rate = decode_flac(audio[clip_id])
        assert rate == 48000 and decoded.shape == (240000,)
        if not silent:
            assert lufs == pytest.approx(ebur128_lufs(decoded, 48000), abs=0.1)
    embedded = db.execute(f"SELECT clip_id, embedding FROM read_parquet('{pool_dir}/embeddings/*.parquet')").fetchall()
    assert {e[0] for e in embedded} == {r[0] for r in rows if not r[3]}
    vectors = np.array([e[1] for e in embedded], dtype=np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    index = faiss.read_index(str(pool_dir / "index" / "index.faiss"))
    ids = db.execute(f"SELECT clip_id FROM read_parquet('{pool_dir}/index/ids.parquet') ORDER BY row").fetchall()
    assert index.ntotal == len(ids) == 13
    by_id = dict(zip([e[0] for e in embedded], vectors))
    _, found = index.search(np.stack([by_id[i[0]] for i in ids]), 1)
    scores = np.stack([by_id[i[0]] for i in ids]) @ np.stack([by_id[i[0]] for i in ids]).T
    assert np.allclose(scores[np.arange(13), found[:, 0]], 1.0, atol=1e-5)


def test_rerun_with_same_sources_changes_nothing(first_run):
    pool_dir, patterns, config, _ = first_run
    before = snapshot(pool_dir)
    summary = run_pool(config)
    assert summary["files_processed"] == 0 and summary["files_unchanged"] == 8
    assert summary["index"]["action"] == "unchanged"
    assert snapshot(pool_dir) == before


def test_extend_changed_source_and_mismatch(first_run, sources, tiny_models, tmp_path):
    pool_dir, patterns, config, _ = first_run
    before = snapshot(pool_dir)

    extra = write_audio(tmp_path / "new" / "bell.wav", tone(12.0, 48000, 880.0), 48000)
    grown = run_pool(make_config(pool_dir, [*patterns, str(extra)], tiny_models))
    assert grown["files_processed"] == 1 and grown["clips_embedded"] == 3
    assert grown["index"]["action"] == "grown" and grown["index"]["size"] == 16
    after = snapshot(pool_dir)
    old_parts = {k: v for k, v in before.items() if k.split("/")[0] in ("clips", "audio", "embeddings")}
    assert all(after[k] == v for k, v in old_parts.items()), "an existing part was rewritten"

    db = clips_db(pool_dir)
    old_ids = {r[0] for r in db.execute("SELECT clip_id FROM clips WHERE source_uri LIKE '%short.flac'").fetchall()}
    (short_part,) = {r[0] for r in db.execute("SELECT part FROM clips WHERE source_uri LIKE '%short.flac'").fetchall()}
    kept_audio = {clip: audio for clip, audio in mixed_audio(pool_dir, short_part).items() if clip not in old_ids}
    assert kept_audio, "the part of short.flac holds no other clip to keep"
    time_before = os.stat(sources / "short.flac").st_mtime_ns
    write_audio(sources / "short.flac", tone(3.0, 22050, 550.0), 22050, "FLAC", "PCM_24")
    os.utime(sources / "short.flac", ns=(time_before + 10**9, time_before + 10**9))
    replaced = run_pool(make_config(pool_dir, [*patterns, str(extra)], tiny_models))
    assert replaced["files_processed"] == 1 and replaced["parts_pruned"] == 1
    assert replaced["index"]["action"] == "built" and replaced["index"]["size"] == 16
    db = clips_db(pool_dir)
    rows = db.execute("SELECT clip_id, duration_s FROM clips WHERE source_uri LIKE '%short.flac'").fetchall()
    assert len(rows) == 1 and rows[0][0] not in old_ids and rows[0][1] == pytest.approx(3.0)
    assert db.execute("SELECT count(*) FROM clips WHERE error IS NULL").fetchone()[0] == 18
    audio_ids = {r[0] for r in db.execute(f"SELECT clip_id FROM read_parquet('{pool_dir}/audio/*.parquet')").fetchall()}
    assert not (audio_ids & old_ids)
    # The pruned part's pack holds its kept clips only, and their new offsets give the same audio.
    after = mixed_audio(pool_dir, short_part)
    assert after.keys() == kept_audio.keys() and all(np.array_equal(after[c], kept_audio[c]) for c in kept_audio)
    with tarfile.open(pool_dir / "audio" / "16000" / f"{short_part}.tar") as tar:
        assert sorted(tar.getnames()) == sorted(f"{c}.flac" for c in kept_audio)
    index_ids = {
        r[0] for r in db.execute(f"SELECT clip_id FROM read_parquet('{pool_dir}/index/ids.parquet')").fetchall()
    }
    assert rows[0][0] in index_ids and not (index_ids & old_ids)

    with pytest.raises(PoolMismatch, match="sample_rate: pool has 48000, config has 16000"):
        run_pool(make_config(pool_dir, patterns, tiny_models, sample_rate=16000))


def mixed_audio(pool_dir: Path, part: str) -> dict[str, np.ndarray]:
    """The clips of a part as the mixer reads them at 16 kHz, from where its clips file says they are."""
    rows = (
        clips_db(pool_dir)
        .execute("SELECT clip_id, loudness_at_rates FROM clips WHERE part = ? AND error IS NULL", [part])
        .fetchall()
    )
    where = [
        ClipLocation(clip, part, at["audio_offset"], at["audio_bytes"])
        for clip, at_rates in rows
        for at in at_rates
        if at["sample_rate"] == 16000
    ]
    return load_pool_clips(str(pool_dir), where, 16000)[0]


class Killed(BaseException):
    """Stands for SIGKILL at one point of a run: nothing after it runs."""


def embedded_ids(pool_dir: Path) -> list[str]:
    return [
        r[0]
        for r in duckdb.connect()
        .execute(f"SELECT clip_id FROM read_parquet('{pool_dir}/embeddings/*.parquet')")
        .fetchall()
    ]


def index_ids(pool_dir: Path) -> list[str]:
    return [
        r[0]
        for r in duckdb.connect()
        .execute(f"SELECT clip_id FROM read_parquet('{pool_dir}/index/ids.parquet') ORDER BY row")
        .fetchall()
    ]


def test_a_run_killed_before_its_index_update_is_caught_up_by_the_rerun(
    sources, tiny_models, ray_session, tmp_path, monkeypatch
):
    pool_dir = tmp_path / "pool"
    run_pool(make_config(pool_dir, [f"{sources}/*.wav"], tiny_models))
    first = index_ids(pool_dir)

    def killed(*_):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr("pipelines.pool.run.update_index", killed)
        with pytest.raises(Killed):
            run_pool(make_config(pool_dir, [f"{sources}/*"], tiny_models))
    assert sorted(embedded_ids(pool_dir)) != sorted(first), "the killed run wrote no new part"
    with pytest.raises(SonifyError, match="its index does not cover its parts"):
        check_pool(make_config(pool_dir, [f"{sources}/*"], tiny_models))

    rerun = run_pool(make_config(pool_dir, [f"{sources}/*"], tiny_models))
    check_pool(make_config(pool_dir, [f"{sources}/*"], tiny_models))
    assert rerun["files_processed"] == 0
    assert rerun["index"]["action"] == "grown"
    grown = index_ids(pool_dir)
    assert grown[: len(first)] == first and sorted(grown) == sorted(embedded_ids(pool_dir))
    assert faiss.read_index(str(pool_dir / "index" / "index.faiss")).ntotal == len(grown)

    # A kill between writing index.faiss and index.json: the index holds vectors that index.json,
    # the marker, does not know of. Growing it again would add them twice.
    old_marker = json.loads((pool_dir / "index" / "index.json").read_text())
    old_marker.update(
        size=len(first), parts={k: v for k, v in old_marker["parts"].items() if k in first_parts(pool_dir, first)}
    )
    (pool_dir / "index" / "index.json").write_text(json.dumps(old_marker))
    repaired = run_pool(make_config(pool_dir, [f"{sources}/*"], tiny_models))
    assert repaired["index"]["action"] == "built"
    assert sorted(index_ids(pool_dir)) == sorted(embedded_ids(pool_dir))
    assert faiss.read_index(str(pool_dir / "index" / "index.faiss")).ntotal == len(grown)


def first_parts(pool_dir: Path, ids: list[str]) -> set[str]:
    """The parts whose embeddings hold these clip ids."""
    rows = (
        duckdb.connect()
        .execute(f"SELECT clip_id, filename FROM read_parquet('{pool_dir}/embeddings/*.parquet', filename = true)")
        .fetchall()
    )
    return {Path(f).stem for clip, f in rows if clip in set(ids)}


def test_auto_index_is_rebuilt_as_ivf_once_the_pool_reaches_exact_below(tmp_path):
    """update_index reads only the embeddings files, so parts written here stand for pool runs."""
    paths = PoolLayout(str(tmp_path / "pool"))
    config = validate_config(
        {"pool": {"dir": paths.root, "index": {"exact_below": 100}}, "models": {"clap": {"model": "m"}}}
    )
    vectors = np.random.default_rng(0).standard_normal((150, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def add_part(name: str, rows: range) -> tuple:
        table = make_table(
            embeddings_schema(8),
            {"clip_id": [f"c{i}" for i in rows], "embedding": list(vectors[rows.start : rows.stop])},
        )
        storage.write_parquet(paths.embeddings(name), table)
        index = update_index(paths, config)
        return index["kind"], index["size"], index["action"]

    assert add_part("a", range(0, 60)) == ("flat", 60, "built")
    assert add_part("b", range(60, 99)) == ("flat", 99, "grown")
    assert add_part("c", range(99, 150)) == ("ivf", 150, "built")
    index = faiss.read_index(str(tmp_path / "pool" / "index" / "index.faiss"))
    assert isinstance(index, faiss.IndexIVFFlat) and index.ntotal == 150
    meta = json.loads((tmp_path / "pool" / "index" / "index.json").read_text())
    assert meta["kind"] == "ivf" and meta["settings"]["kind"] == "auto"


def test_laion_backend_with_hnsw_index(sources, tiny_models, ray_session, tmp_path):
    config = validate_config(
        {
            "pool": {
                "dir": str(tmp_path / "pool"),
                "sources": [str(sources / "long noise.wav"), str(sources / "birds.ogg")],
                "index": {"kind": "hnsw"},
            },
            "models": {
                "clap": {
                    "backend": "laion_clap",
                    "model": tiny_models["clap_laion_checkpoint"],
                    "text_backbones_dir": tiny_models["clap_laion_text_backbones"],
                    "batch_size": 3,
                }
            },
        }
    )
    summary = run_pool(config)
    assert summary["clips_embedded"] == 9
    assert summary["index"]["kind"] == "hnsw" and summary["index"]["size"] == 9


def test_a_retry_that_succeeds_keeps_its_clips(tiny_models, ray_session, tmp_path):
    """The retried file's new part has the name of the failed part it replaces (parts are named
    by their sources and fingerprints): pruning must not delete what the retry wrote."""
    flaky = write_audio(tmp_path / "src" / "flaky.wav", tone(8.0, 16000, 440.0), 16000)
    audio, stat = flaky.read_bytes(), flaky.stat()

    def put(data: bytes) -> None:
        flaky.write_bytes(data)
        os.utime(flaky, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    put(b"\0" * len(audio))  # same size and mtime: the fingerprint cannot tell the two apart
    config = make_config(tmp_path / "pool", [str(flaky)], tiny_models, retry_errors=True)
    assert run_pool(config)["errors"] == 1
    put(audio)
    summary = run_pool(config)
    assert summary["files_processed"] == 1 and summary["errors"] == 0 and summary["clips_added"] == 2
    clips = (
        duckdb.connect()
        .sql(f"select clip_id from read_parquet('{tmp_path / 'pool' / 'clips'}/*.parquet') where error is null")
        .fetchall()
    )
    assert len(clips) == 2
    indexed = (
        duckdb.connect()
        .sql(f"select clip_id from read_parquet('{tmp_path / 'pool' / 'index' / 'ids.parquet'}')")
        .fetchall()
    )
    assert sorted(indexed) == sorted(clips)
    assert summary["index"]["size"] == 2
