"""Long sources are standardized in blocks with bounded memory, and the blocks change nothing: the
clips, their loudness and the packs equal a whole-file computation made here with libsndfile and
soxr's one-call resampler. Block, piece, spool and row-group sizes are made tiny, so that every
edge (a block ending inside a clip, a resampler piece, a spool on disk, a source read twice, a part
file of many row groups) is crossed many times."""

from __future__ import annotations

import hashlib
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import soxr

from stages.audio import decode, loudness, part_writer, standardize, standardize_stage
from stages.audio.packs import PCM16_SCALE, encode_flac, quantize_pcm16
from stages.audio.standardize import chunk
from stages.audio.standardize_stage import Standardize
from tests.helpers import noise, tone, write_audio

POOL_RATE, MIX_RATES = 48000, [16000, 22050]


@pytest.fixture
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(decode, "BLOCK_SAMPLES", 999)
    monkeypatch.setattr(standardize, "MAX_RESAMPLED_SAMPLES", 777)
    monkeypatch.setattr(part_writer, "SPOOL_MEMORY_BYTES", 10_000)
    monkeypatch.setattr(part_writer, "AUDIO_ROW_GROUP_BYTES", 50_000)
    monkeypatch.setattr(standardize_stage, "SOURCE_IN_MEMORY_BYTES", 100_000)


def sources(folder: Path) -> list[Path]:
    stereo = np.stack([noise(11.3, 44100, 0.1, 1), tone(11.3, 44100, 300.0)], axis=1)
    return [
        write_audio(folder / "stereo.wav", stereo, 44100),
        write_audio(folder / "high.flac", noise(6.2, 96000, 0.2, 2), 96000, "FLAC"),
        write_audio(folder / "voice.ogg", tone(7.0, 22050, 500.0) + noise(7.0, 22050, 0.05, 3), 22050, "OGG"),
        write_audio(folder / "engine.mp3", tone(6.0, 44100, 90.0) + noise(6.0, 44100, 0.05, 4), 44100, "MP3"),
        # Exactly two clips once resampled, and exactly two at the pool rate: no padded clip.
        write_audio(folder / "phone.wav", noise(10.0, 8000, 0.3, 5), 8000, "WAV", "PCM_U8"),
        write_audio(folder / "native.wav", noise(10.0, POOL_RATE, 0.2, 6), POOL_RATE),
        write_audio(folder / "click.wav", noise(0.2, 16000, 0.2, 7), 16000),
    ]


def reference_clips(path: Path) -> list[dict]:
    """The whole file at once: decoded, down-mixed, resampled in one call, cut, measured, encoded."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1, dtype=np.float64).astype(np.float32)
    resampled = mono if rate == POOL_RATE else soxr.resample(mono, rate, POOL_RATE, quality="HQ")
    clips, real = chunk(resampled, POOL_RATE, 5.0)
    source = hashlib.sha1(f"{path}\0{hashlib.sha256(path.read_bytes()).hexdigest()}".encode()).hexdigest()[:16]
    out = []
    for index, (clip, samples) in enumerate(zip(clips, real)):
        pcm = quantize_pcm16(clip)
        stored = pcm.astype(np.float32) / PCM16_SCALE
        at_rates = {}
        for mix_rate in MIX_RATES:
            heard_pcm = quantize_pcm16(soxr.resample(stored, POOL_RATE, mix_rate, quality="HQ"))
            heard = heard_pcm.astype(np.float32) / PCM16_SCALE
            at_rates[mix_rate] = (loudness.integrated_lufs(heard, mix_rate), encode_flac(heard_pcm, mix_rate))
        out.append(
            {
                "clip_id": f"{source}-{index:05d}",
                "duration_s": samples / POOL_RATE,
                "lufs": loudness.integrated_lufs(stored, POOL_RATE),
                "flac": encode_flac(pcm, POOL_RATE),
                "at_rates": at_rates,
                "source_duration_s": audio.shape[0] / rate,
                "source_channels": audio.shape[1],
            }
        )
    return out


def standardized(pool: Path, paths: list[Path]) -> list[dict]:
    stage = Standardize(str(pool), POOL_RATE, 5.0, -70.0, MIX_RATES)
    uris = [str(p) for p in paths]
    return stage.process_part({"part": "p", "uris": uris, "fingerprints": None, "errors": None}).to_pylist()


def pack_members(pool: Path, rate: int) -> dict[str, bytes]:
    with tarfile.open(pool / "audio" / str(rate) / "p.tar") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_streamed_clips_equal_a_whole_file_computation(tmp_path, tiny_blocks):
    paths = sources(tmp_path / "src")
    rows = standardized(tmp_path / "pool", paths)
    assert not [r["error"] for r in rows if r["error"]]
    expected = [clip for path in paths for clip in reference_clips(path)]
    assert [r["clip_id"] for r in rows] == [c["clip_id"] for c in expected]
    for row, clip in zip(rows, expected):
        assert row["duration_s"] == clip["duration_s"] and row["lufs"] == clip["lufs"], row["clip_id"]
        assert (row["source_duration_s"], row["source_channels"]) == (
            clip["source_duration_s"],
            clip["source_channels"],
        )
        assert {e["sample_rate"]: e["lufs"] for e in row["loudness_at_rates"]} == {
            rate: lufs for rate, (lufs, _) in clip["at_rates"].items()
        }

    audio = pq.ParquetFile(tmp_path / "pool" / "audio" / "p.parquet")
    assert audio.metadata.num_row_groups > 1  # many row groups, read back as one table
    stored = audio.read().to_pylist()
    assert [(r["clip_id"], r["flac"]) for r in stored] == [(c["clip_id"], c["flac"]) for c in expected]
    for rate in MIX_RATES:
        members = pack_members(tmp_path / "pool", rate)
        assert members == {f"{c['clip_id']}.flac": c["at_rates"][rate][1] for c in expected}
        data = (tmp_path / "pool" / "audio" / str(rate) / "p.tar").read_bytes()
        for row in rows:
            (entry,) = [e for e in row["loudness_at_rates"] if e["sample_rate"] == rate]
            located = data[entry["audio_offset"] : entry["audio_offset"] + entry["audio_bytes"]]
            assert located == members[f"{row['clip_id']}.flac"]


def test_the_block_size_changes_no_byte(tmp_path, monkeypatch):
    """Through FFmpeg too (AAC in m4a, which libsndfile refuses): large and tiny blocks, same bytes."""
    from tests.helpers import pyav_media

    folder = tmp_path / "src"
    paths = sources(folder)
    (folder / "tune.m4a").write_bytes(pyav_media(tone(9.0, 44100, 440.0), 44100, "ipod", "aac"))
    paths.append(folder / "tune.m4a")
    rows = standardized(tmp_path / "large", paths)
    for name, size in (("BLOCK_SAMPLES", 1000), ("MAX_RESAMPLED_SAMPLES", 555)):
        monkeypatch.setattr(decode if name == "BLOCK_SAMPLES" else standardize, name, size)
    assert standardized(tmp_path / "tiny", paths) == rows
    for folder_name in ("audio/p.parquet", "audio/16000/p.tar", "audio/22050/p.tar"):
        assert (tmp_path / "large" / folder_name).read_bytes() == (tmp_path / "tiny" / folder_name).read_bytes()


def test_a_source_that_fails_midway_leaves_nothing_in_its_part(tmp_path, monkeypatch, tiny_blocks):
    original = standardize.to_mono
    blocks_seen = {"count": 0}

    def to_mono(block):
        if block.shape[1] == 3:
            blocks_seen["count"] += 1
            if blocks_seen["count"] == 400:  # well after its first clips were cut
                raise MemoryError("no room left")
        return original(block)

    monkeypatch.setattr(standardize, "to_mono", to_mono)
    folder = tmp_path / "src"
    paths = [
        write_audio(folder / "a.wav", tone(6.0, 16000), 16000),
        write_audio(folder / "b.wav", tone(20.0, 16000, channels=3), 16000),
        write_audio(folder / "c.wav", tone(3.0, 16000), 16000),
    ]
    rows = standardized(tmp_path / "pool", paths)
    (failed,) = [r for r in rows if r["source_uri"].endswith("b.wav")]
    assert failed["error_kind"] == "failed" and "no room left" in failed["error"]
    kept = [r["clip_id"] for r in rows if r["error"] is None]
    assert len(kept) == 3  # a.wav: 2, c.wav: 1
    stored = pq.read_table(tmp_path / "pool" / "audio" / "p.parquet").column("clip_id").to_pylist()
    assert stored == kept
    assert sorted(pack_members(tmp_path / "pool", 16000)) == sorted(f"{c}.flac" for c in kept)


def peak_traced_bytes(pool: Path, path: Path, mix_rates: list[int]) -> tuple[int, list[dict]]:
    """Peak bytes Python and numpy allocated while one part of one source was standardized."""
    stage = Standardize(str(pool), POOL_RATE, 5.0, -70.0, mix_rates)
    tracemalloc.start()
    try:
        rows = stage.process_part({"part": "p", "uris": [str(path)], "fingerprints": None, "errors": None})
        return tracemalloc.get_traced_memory()[1], rows.to_pylist()
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("rate, channels", [(POOL_RATE, 2), (1000, 1)])
def test_memory_does_not_grow_with_the_length_of_a_source(tmp_path, rate, channels):
    """A 30-second and a 6-minute source (48 kHz stereo; or 1 kHz mono, which resampling
    multiplies 48-fold) peak within 48 MiB of each other: the long one's 66 MiB of WAV (or 66 MiB
    of samples at 48 kHz) are never held whole; what it holds more is its clips' FLAC, capped at
    part_writer.SPOOL_MEMORY_BYTES (32 MiB) in memory. Whole-file decoding held 131 to 393 MiB more."""

    def source(name: str, seconds: int) -> Path:
        path = tmp_path / name
        with soundfile.SoundFile(path, "w", rate, channels, "PCM_16") as out:
            for second in range(seconds):
                block = noise(1.0, rate, 0.1, second).reshape(-1, 1).repeat(channels, axis=1)
                out.write(block)
        return path

    short_peak, short_rows = peak_traced_bytes(tmp_path / "short", source("short.wav", 30), [16000])
    long_peak, long_rows = peak_traced_bytes(tmp_path / "long", source("long.wav", 6 * 60), [16000])
    assert len(short_rows) == 6 and len(long_rows) == 72
    assert long_peak - short_peak < 48 * 2**20, (short_peak >> 20, long_peak >> 20)
