"""Inputs as real pools and photo folders hold them, end to end through Ray: tones above the mix
rate's Nyquist frequency, hiss, a dozen byte-identical files (tied scores), image names of 120
characters. The run must finish, never choose a clip that is inaudible at the mix rate, and write
shards that GNU tar, Python's tarfile and webdataset read whole."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import duckdb
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from pipelines.sonify import run_sonify
from tests.helpers import noise, tone, write_audio
from tests.test_loudness import highpassed_noise

DUPLICATES = 12
MAX_BAND_LOSS_LU = 20.0
SILENCE_LUFS = -70.0


@pytest.fixture(scope="module")
def run(tiny_models, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-inputs")
    audio = root / "audio"
    write_audio(audio / "whistle 12 kHz.wav", tone(10.0, 48000, 12000.0, 0.5), 48000)
    write_audio(audio / "hiss.flac", highpassed_noise(5.0, 48000, 9000.0), 48000, "FLAC")
    write_audio(audio / "hum.wav", tone(5.0, 48000, 120.0, 0.3), 48000)
    original = write_audio(audio / "library-a" / "door.wav", noise(5.0, 48000, 0.2, 3), 48000)
    for i in range(1, DUPLICATES):
        copy = audio / f"library-{i}" / "door.wav"
        copy.parent.mkdir()
        shutil.copy(original, copy)
    images = root / "images"
    images.mkdir()
    # 138 characters (the key keeps them whole) and 201 twice, differing only at the end (cut, hashed).
    stems = ["0_" + "scraped-photo-name-" * 7 + "000", *(f"{'long-scraped-name-' * 11}{i:03d}" for i in (1, 2))]
    assert [len(s) for s in stems] == [138, 201, 201]
    for i, stem in enumerate(stems):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(images / f"{stem}.jpg")
    concepts = root / "concepts.jsonl"
    concepts.write_text(
        "\n".join(
            json.dumps(
                {
                    "image_id": stem,
                    "concepts": [{"label": s, "text": s} for s in ("door slam", "whistle", "hum", "wind")],
                }
            )
            for stem in stems
        )
        + "\n"
    )
    config = validate_config(
        {
            "seed": 5,
            "pool": {
                "dir": str(root / "pool"),
                "sources": [str(audio / "**" / "*")],
                "max_band_loss_lu": MAX_BAND_LOSS_LU,
            },
            "models": {
                "clap": {"backend": "transformers", "model": tiny_models["clap_transformers"], "batch_size": 8},
                "vlm": [{"name": "given", "backend": "provided", "path": str(concepts)}],
            },
            "sonify": {
                "images": [str(images / "*.jpg")],
                "out": str(root / "out"),
                "min_side": 32,
                "shard_size_mb": 0.05,
            },
            # Every pool clip is a neighbour of every text, so inaudible clips and tied copies are in reach.
            "retrieval": {"search_k": 64, "k": 64, "min_cosine": -1.0},
        }
    )
    pool_summary = run_pool(config)
    return config, root, stems, pool_summary, run_sonify(config)


def test_inaudible_clips_are_counted_and_never_chosen(run):
    config, root, _, pool_summary, summary = run
    db = duckdb.connect()
    db.execute(
        f"CREATE VIEW clips AS SELECT * FROM read_parquet('{root}/pool/clips/*.parquet') "
        "WHERE error IS NULL AND NOT silent"
    )
    # The rule, restated on the pool table: measured at 16 kHz, above the floor, at most 20 LU lost.
    inaudible = {
        row[0]
        for row in db.execute(
            "SELECT clip_id, lufs, "
            "(SELECT r.lufs FROM (SELECT unnest(loudness_at_rates) AS r) WHERE r.sample_rate = 16000) AS at16 "
            "FROM clips"
        ).fetchall()
        if row[2] is None or row[2] < SILENCE_LUFS or row[1] - row[2] > MAX_BAND_LOSS_LU
    }
    whistle_and_hiss = {
        r[0]
        for r in db.execute(
            "SELECT clip_id FROM clips WHERE source_uri LIKE '%whistle%' OR source_uri LIKE '%hiss%'"
        ).fetchall()
    }
    assert inaudible == whistle_and_hiss and len(inaudible) == 3
    assert pool_summary["pool"]["inaudible_at_mix_rates"] == {"16000": 3}
    assert summary["pool_clips_inaudible_at_mix_rate"] == 3
    assert summary["samples"] == 3 and summary["rejected"] == 0

    db.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet('{root}/out/manifest/*.parquet') WHERE error IS NULL")
    chosen = db.execute(
        "SELECT c.clip_id, c.clip_lufs, c.target_lufs, c.gain_db, c.n_candidates, c.fallback "
        "FROM (SELECT unnest(concepts) AS c FROM m)"
    ).fetchall()
    assert len(chosen) == 12
    quietest_audible = db.execute(
        "SELECT min(r.lufs) FROM (SELECT unnest(loudness_at_rates) AS r FROM clips) "
        "WHERE r.sample_rate = 16000 AND r.lufs >= -70"
    ).fetchone()[0]
    copies = {r[0] for r in db.execute("SELECT clip_id FROM clips WHERE source_uri LIKE '%door.wav'").fetchall()}
    assert len(copies) == DUPLICATES
    for clip_id, clip_lufs, target, gain, n_candidates, fallback in chosen:
        assert clip_id not in inaudible
        assert gain == pytest.approx(target - clip_lufs)
        assert gain <= config.mix.lufs_max - quietest_audible + 1e-9
        if clip_id in copies and not fallback:
            # Its tied copies are candidates with it, less those the sample's other concepts took
            # (a fallback, tau <= 0, is top-1 alone by design).
            assert n_candidates >= DUPLICATES - 3
    # A sample never uses one clip twice.
    for (concepts,) in db.execute("SELECT concepts FROM m").fetchall():
        ids = [c["clip_id"] for c in concepts]
        assert len(ids) == len(set(ids))


def test_long_image_names_give_shards_every_reader_reads(run):
    _, root, stems, _, summary = run
    shards = sorted(str(p) for p in (root / "out" / "shards").glob("*.tar"))
    assert len(shards) == summary["shards"] >= 1
    manifest_keys = sorted(
        r[0] for r in duckdb.sql(f"SELECT key FROM read_parquet('{root}/out/manifest/*.parquet')").fetchall()
    )
    assert f"{stems[0]}__given" in manifest_keys and len(set(manifest_keys)) == 3
    assert all(len(f"{key}.flac") <= 255 for key in manifest_keys)
    tar_names = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            tar_names += tar.getnames()
        gnu = subprocess.run(["tar", "-tf", shard], capture_output=True, text=True, check=True).stdout.split()
        assert gnu == tar_names[-len(gnu) :]
    assert sorted({name.rsplit(".", 1)[0] for name in tar_names}) == manifest_keys
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == manifest_keys
    assert all({"jpg", "flac", "json"} <= set(s) for s in samples)
