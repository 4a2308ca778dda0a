"""PoolStore, the read API of a pool: meta and format, compatibility, clips, mixable clips,
embeddings and the index's state, on a small pool built here without Ray or a model (the
standardize stage's part, embeddings written by hand, the index by the pool's own update)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import validate_config
from pipelines.pool.index import update_index
from pipelines.pool.store import PoolMismatch, PoolStore
from schemas import POOL_CLIPS, embeddings_schema, make_table
from schemas.layout import PoolLayout
from stages.audio.packs import decode_flac
from stages.audio.standardize_stage import Standardize
from stages.io import storage
from tests.helpers import noise, tone, write_audio

POOL_RATE, MIX_RATE, DIM = 16000, 8000, 8
REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"backend": "transformers", "model": "clap", "dim": DIM}


def pool_config(root: str, **pool):
    return validate_config(
        {
            "pool": {"dir": root, "sample_rate": POOL_RATE, "mix_sample_rates": [MIX_RATE], **pool},
            "models": {"clap": {"model": "clap"}},
        }
    )


@pytest.fixture
def pool(tmp_path):
    """A pool of one part: 12 s of noise (3 clips), 6 s of a 6 kHz tone (2 clips, audible at the pool
    rate and gone at the mix rate), 3 s of silence and a file that does not exist. Returns the store,
    its config, the clip ids by source and the embedding of every embedded clip."""
    root = str(tmp_path / "pool")
    config = pool_config(root)
    files = {
        "noise": write_audio(tmp_path / "noise.wav", noise(12.0, POOL_RATE, 0.1, seed=3), POOL_RATE),
        "tone": write_audio(tmp_path / "tone.wav", tone(6.0, POOL_RATE, 6000.0), POOL_RATE),
        "silence": write_audio(tmp_path / "silence.wav", np.zeros(3 * POOL_RATE, np.float32), POOL_RATE),
        "missing": tmp_path / "missing.wav",
    }
    store = PoolStore.at(root + "/")
    storage.write_text(store.layout.pool_meta(), json.dumps(store.check_compatible(IDENTITY, config.pool)))
    rows = Standardize(root, POOL_RATE, 5.0, config.pool.silence_lufs, [MIX_RATE]).process_part(
        {"part": "part-a", "uris": [str(f) for f in files.values()], "fingerprints": None, "errors": None}
    )
    storage.write_parquet(store.layout.clips("part-a"), make_table(POOL_CLIPS, rows.select(POOL_CLIPS.names)))
    by_source = {
        name: [r["clip_id"] for r in rows.to_pylist() if r["source_uri"] == str(path)] for name, path in files.items()
    }
    embedded = by_source["noise"] + by_source["tone"]
    vectors = np.random.default_rng(0).standard_normal((len(embedded), DIM)).astype(np.float32)
    write_embeddings(store.layout, "part-a", embedded, vectors)
    return store, config, by_source, dict(zip(embedded, vectors))


def write_embeddings(layout: PoolLayout, part: str, clip_ids: list[str], vectors: np.ndarray) -> None:
    table = make_table(embeddings_schema(DIM), {"clip_id": clip_ids, "embedding": list(vectors)})
    storage.write_parquet(layout.embeddings(part), table)


def test_the_store_is_made_at_a_root_without_its_trailing_slash(pool):
    store = pool[0]
    assert not store.root.endswith("/")
    assert store.layout.pool_meta() == store.root + "/pool.json"


def test_meta_and_format_version(pool):
    store, config = pool[0], pool[1]
    assert store.exists()
    assert store.format_version() == PoolLayout.FORMAT
    meta = store.meta()
    assert meta["clap"] == IDENTITY and meta["mix_sample_rates"] == [MIX_RATE]
    assert meta["sample_rate"] == config.pool.sample_rate


def test_a_pool_of_another_format_is_read_for_its_version_and_refused_for_its_meta(pool):
    store = pool[0]
    storage.write_text(store.layout.pool_meta(), json.dumps({**store.meta(), "format": PoolLayout.FORMAT - 1}))
    assert store.format_version() == PoolLayout.FORMAT - 1
    with pytest.raises(PoolMismatch, match=f"pool format {PoolLayout.FORMAT - 1}, this one writes"):
        store.meta()
    with pytest.raises(PoolMismatch, match="rebuild the pool into a new pool.dir"):
        store.check_compatible(IDENTITY, pool[1].pool)


def test_compatibility_names_each_setting_that_differs(pool, tmp_path):
    store, config = pool[0], pool[1]
    assert store.check_compatible(IDENTITY, config.pool) == store.meta()
    with pytest.raises(PoolMismatch, match=r"clap: pool has .*'model': 'clap'.*config has .*'other'"):
        store.check_compatible({**IDENTITY, "model": "other"}, config.pool)
    other_rates = pool_config(store.root, mix_sample_rates=[MIX_RATE, 16000]).pool
    with pytest.raises(PoolMismatch, match=r"mix_sample_rates: pool has \[8000\], config has \[8000, 16000\]"):
        store.check_compatible(IDENTITY, other_rates)
    # A folder without a pool takes any settings: a pool run starts one there.
    empty = PoolStore.at(str(tmp_path / "empty"))
    assert not empty.exists()
    assert empty.check_compatible({"model": "other"}, other_rates)["mix_sample_rates"] == [MIX_RATE, 16000]


def test_clips_are_every_finished_part_with_failed_sources(pool):
    store, _, by_source, _ = pool
    clips = store.clips(["clip_id", "source_uri", "error", "silent"]).to_pylist()
    assert (
        clips
        == storage.read_parquet(store.layout.clips("part-a"))
        .select(["clip_id", "source_uri", "error", "silent"])
        .to_pylist()
    )
    assert [len(by_source[s]) for s in ("noise", "tone", "silence", "missing")] == [3, 2, 1, 1]
    assert [c["error"] is not None for c in clips].count(True) == 1
    assert store.clip_files() == [store.layout.clips("part-a")]
    assert store.clips(["clip_id", "part"]).num_rows == len(clips)


def test_a_pool_without_parts_has_an_empty_clips_table(tmp_path):
    store = PoolStore.at(str(tmp_path / "pool"))
    table = store.clips(["clip_id", "lufs"])
    assert table.num_rows == 0 and table.schema.names == ["clip_id", "lufs"]
    assert store.mixable_clips(MIX_RATE, -70.0, 20.0)[0].num_rows == 0


def test_mixable_clips_are_the_indexed_clips_audible_at_the_rate_located_in_its_pack(pool):
    store, config, by_source, _ = pool
    clips, inaudible = store.mixable_clips(MIX_RATE, config.pool.silence_lufs, config.pool.max_band_loss_lu)
    # The tone sits above the mix rate's Nyquist frequency; silence and the missing file are not indexed.
    assert sorted(clips.column("clip_id").to_pylist()) == sorted(by_source["noise"])
    assert clips.column("clip_id").to_pylist() == sorted(by_source["noise"])
    assert inaudible == len(by_source["tone"])
    pack = storage.read_bytes(store.layout.mix_audio("part-a", MIX_RATE))
    for row in clips.to_pylist():
        assert row["part"] == "part-a"
        audio, rate = decode_flac(pack[row["audio_offset"] : row["audio_offset"] + row["audio_bytes"]])
        assert rate == MIX_RATE and len(audio) == 5 * MIX_RATE
    # Allowing any loss to the band limit (and any loudness) lets the tone's clips in.
    looser, none_inaudible = store.mixable_clips(MIX_RATE, -1000.0, 1000.0)
    assert set(looser.column("clip_id").to_pylist()) >= set(by_source["noise"])
    assert looser.num_rows + none_inaudible == len(by_source["noise"]) + len(by_source["tone"])


def test_embeddings_and_the_state_of_the_index(pool):
    store, config, _, vectors = pool
    assert store.embedded_parts() == {"part-a": len(vectors)}
    ids, found = store.embeddings()
    assert ids == list(vectors) and np.array_equal(found, np.stack(list(vectors.values())))
    assert store.embeddings(["no-such-part"]) == ([], None)

    assert store.index_meta() is None and not store.has_index() and not store.index_is_current()
    update_index(store.layout, config)
    meta = store.index_meta()
    assert meta["size"] == len(vectors) and meta["parts"] == {"part-a": len(vectors)}
    assert store.has_index() and store.index_is_current()

    # A part written after the index update leaves the index behind until the next update.
    write_embeddings(store.layout, "part-b", ["late"], np.ones((1, DIM), np.float32))
    assert not store.index_is_current()
    ids, found = store.embeddings(["part-b"])
    assert ids == ["late"] and found.shape == (1, DIM)
    update_index(store.layout, config)
    assert store.index_is_current() and store.index_meta()["size"] == len(vectors) + 1


def test_summary_is_none_until_a_run_finishes(pool):
    store = pool[0]
    assert store.summary() is None
    storage.write_text(store.layout.summary(), json.dumps({"wall_seconds": 1.5}))
    assert store.summary() == {"wall_seconds": 1.5}


def test_reading_a_pool_imports_no_ray_and_the_package_still_names_its_run():
    """Report reads pools through the store: that must not import the run, which imports Ray; the
    CLI and callers reach run_pool and format_summary through the package all the same."""
    code = (
        "import sys, pipelines.pool, pipelines.report\n"
        "assert 'ray' not in sys.modules, 'reading a pool imported Ray'\n"
        "from pipelines.pool import format_summary, run_pool\n"
        "print(run_pool.__module__, format_summary.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pipelines.pool.run", "pipelines.pool.summary"]
