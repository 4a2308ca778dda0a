"""A pool over every kind of source a real pool holds, end to end through Ray: audio and video
files FFmpeg decodes, a Parquet file of audio bytes and a WebDataset tar of audio members. Every
container is made by PyAV in the test; the tables are read back with DuckDB and the clips measured
with libebur128."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from pipelines.config import validate_config
from pipelines.pool.run import run_pool
from stages.audio.packs import decode_flac
from tests.helpers import noise, pyav_media, tone
from tests.test_loudness import ebur128_lufs
from tests.test_pool_pipeline import snapshot

RATE = 48000


def sound(seconds: float, index: int) -> np.ndarray:
    return (noise(seconds, RATE, 0.05, index) + tone(seconds, RATE, 200.0 + 90 * index, 0.15)).astype(np.float32)


def lossless(audio: np.ndarray, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


# Every sound is 6 s long, so every source gives two 5 s clips.
FILES = ["music.m4a", "speech.webm", "voice.opus", "street.mp4", "radio.aac", "rain.flac", "wind.wav", "birds.ogg"]
PARQUET_ROWS = ["dog.wav", "cat.m4a"]
TAR_MEMBERS = ["k0/engine.flac", "k1/horn.webm"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("every source")
    makers = {
        "m4a": lambda a: pyav_media(a, RATE, "ipod", "aac"),
        "webm": lambda a: pyav_media(a, RATE, "webm", "libopus"),
        "opus": lambda a: pyav_media(a, RATE, "ogg", "libopus"),
        "mp4": lambda a: pyav_media(a, RATE, "mp4", "aac", video=True),
        "aac": lambda a: pyav_media(a, RATE, "adts", "aac"),
        "flac": lambda a: lossless(a, "FLAC"),
        "wav": lambda a: lossless(a, "WAV", "PCM_16"),
        "ogg": lambda a: lossless(a, "OGG", "VORBIS"),
    }
    for index, name in enumerate(FILES):
        (src / name).write_bytes(makers[name.rsplit(".", 1)[1]](sound(6.0, index)))
    # The same sound as wind.wav, re-encoded: its clips must be as loud as the lossless ones.
    (src / "wind again.m4a").write_bytes(makers["m4a"](sound(6.0, FILES.index("wind.wav"))))
    (src / "no sound.mp4").write_bytes(pyav_media(None, RATE, "mp4", None, video=True))

    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [
        {"bytes": makers[name.rsplit(".", 1)[1]](sound(6.0, 20 + i)), "path": name}
        for i, name in enumerate(PARQUET_ROWS)
    ]
    pq.write_table(pa.table({"audio": pa.array(rows, audio_type), "label": ["dog", "cat"]}), src / "hf-train.parquet")

    with tarfile.open(src / "shard-000000.tar", "w") as tar:
        members = [(name, makers[name.rsplit(".", 1)[1]](sound(6.0, 30 + i))) for i, name in enumerate(TAR_MEMBERS)]
        for name, data in [*members, ("k0/engine.json", b'{"label": "engine"}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return src


@pytest.fixture(scope="module")
def runs(sources, tmp_path_factory, tiny_models, ray_session):
    pool_dir = tmp_path_factory.mktemp("every source pool") / "pool"
    config = validate_config(
        {
            "pool": {
                "dir": str(pool_dir),
                "sources": [f"{sources}/*"],
                "files_per_part": 4,
                "parquet": {"id_column": "audio.path"},
            },
            "models": {"clap": {"backend": "transformers", "model": tiny_models["clap_transformers"], "batch_size": 8}},
        }
    )
    first = run_pool(config)
    before = snapshot(pool_dir)
    second = run_pool(config)
    return pool_dir, sources, first, second, before


def test_every_source_gives_clips_and_a_silent_video_its_own_error(runs):
    pool_dir, sources, first, _, _ = runs
    db = duckdb.connect()
    db.execute(f"CREATE VIEW clips AS SELECT * FROM read_parquet('{pool_dir}/clips/*.parquet')")
    per_source = dict(db.execute("SELECT source_uri, count(*) FROM clips WHERE error IS NULL GROUP BY 1").fetchall())
    expected = [*FILES, "wind again.m4a"]
    expected += [f"hf-train.parquet#{name}" for name in PARQUET_ROWS]
    expected += [f"shard-000000.tar#{name}" for name in TAR_MEMBERS]
    assert per_source == {f"{sources}/{name}": 2 for name in expected}
    errors = db.execute("SELECT source_uri, error FROM clips WHERE error IS NOT NULL").fetchall()
    assert errors == [
        (
            f"{sources}/no sound.mp4",
            f"{sources}/no sound.mp4: no audio stream (a mov,mp4,m4a,3gp,3g2,mj2 file holding only video streams)",
        )
    ]
    assert first["errors_by_kind"] == {"no_audio_stream": 1} and first["pool"]["errors_by_kind"] == {
        "no_audio_stream": 1
    }
    assert first["files_listed"] == len(expected) + 1 and first["clips_added"] == 2 * len(expected)
    formats = dict(
        db.execute(
            "SELECT DISTINCT regexp_extract(source_uri, '[^/#]+$'), source_format FROM clips WHERE error IS NULL"
        ).fetchall()
    )
    assert (
        formats["street.mp4"] == "AAC/MOV"
        and formats["speech.webm"] == "OPUS/MATROSKA"
        and formats["radio.aac"] == "AAC/AAC"
    )
    assert formats["cat.m4a"] == "AAC/MOV" and formats["horn.webm"] == "OPUS/MATROSKA" and formats["wind.wav"] == "WAV"


def test_stored_clips_are_as_loud_as_the_lossless_original(runs):
    pool_dir, sources, _, _, _ = runs
    db = duckdb.connect()
    rows = db.execute(
        f"SELECT c.source_uri, c.chunk_index, c.lufs, a.flac FROM read_parquet('{pool_dir}/clips/*.parquet') c "
        f"JOIN read_parquet('{pool_dir}/audio/*.parquet') a USING (clip_id) "
        "WHERE c.source_uri LIKE '%wind%' ORDER BY 1, 2"
    ).fetchall()
    measured = {
        (Path(uri).name, chunk): (lufs, ebur128_lufs(decode_flac(flac)[0], RATE)) for uri, chunk, lufs, flac in rows
    }
    for chunk in (0, 1):
        stored_m4a, independent_m4a = measured[("wind again.m4a", chunk)]
        stored_wav, _ = measured[("wind.wav", chunk)]
        assert stored_m4a == pytest.approx(independent_m4a, abs=0.1)
        assert abs(stored_m4a - stored_wav) < 1.0


def test_a_second_run_over_the_same_sources_processes_nothing(runs):
    pool_dir, _, first, second, before = runs
    assert second["files_listed"] == first["files_listed"]
    assert second["files_processed"] == 0 and second["parts_written"] == 0 and second["clips_added"] == 0
    assert second["files_unchanged"] == first["files_listed"]
    assert snapshot(pool_dir) == before
