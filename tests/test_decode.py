"""Decoding through FFmpeg (PyAV) what libsndfile refuses. Every container is made here by PyAV
itself, so the suite needs no ffmpeg binary; loudness is checked with libebur128 (pyebur128)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from stages.audio.decode import NoAudioStream, UnreadableAudio, decode
from stages.audio.standardize import resample, to_mono
from stages.audio.standardize_stage import Standardize
from tests.conftest import REPO
from tests.helpers import noise, pyav_media, tone
from tests.test_loudness import ebur128_lufs

RATE = 48000


def programme(seconds: float = 6.0, rate: int = RATE) -> np.ndarray:
    """Stereo noise and tones with a slow swell: a signal a codec cannot code trivially."""
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * np.arange(int(seconds * rate)) / rate)
    left = (noise(seconds, rate, 0.08, 1) + tone(seconds, rate, 220.0, 0.2)) * swell
    right = (noise(seconds, rate, 0.08, 2) + tone(seconds, rate, 1375.0, 0.1)) * swell
    return np.stack([left, right], axis=1).astype(np.float32)


# name -> (PyAV container, codec, with a video stream, the format `decode` reports)
CONTAINERS = {
    "m4a": ("ipod", "aac", False, "AAC/MOV"),
    "aac": ("adts", "aac", False, "AAC/AAC"),
    "webm": ("webm", "libopus", False, "OPUS/MATROSKA"),
    "mkv": ("matroska", "libopus", True, "OPUS/MATROSKA"),
    "mp4": ("mp4", "aac", True, "AAC/MOV"),
    "mov": ("mov", "aac", True, "AAC/MOV"),
}


@pytest.fixture(scope="module")
def media() -> dict[str, bytes]:
    audio = programme()
    return {name: pyav_media(audio, RATE, fmt, codec, video) for name, (fmt, codec, video, _) in CONTAINERS.items()}


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_containers_libsndfile_refuses_decode_through_ffmpeg(media, name):
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.read(io.BytesIO(media[name]))
    decoded = decode(media[name])
    assert decoded.format == CONTAINERS[name][3]
    assert decoded.sample_rate == RATE and decoded.audio.shape[1] == 2 and decoded.audio.dtype == np.float32
    # Codec priming and frame padding add at most a few frames.
    assert 6.0 * RATE <= decoded.audio.shape[0] < 6.0 * RATE + 4096
    # Left and right carry their own tones: the channels were not swapped or merged.
    left, right = (np.abs(np.fft.rfft(decoded.audio[:RATE, c])) for c in (0, 1))
    assert abs(np.argmax(left) - 220) <= 1 and abs(np.argmax(right) - 1375) <= 1


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_a_reencoded_file_is_as_loud_as_its_lossless_original(media, name):
    def lufs(data: bytes) -> float:
        decoded = decode(data)
        return ebur128_lufs(resample(to_mono(decoded.audio), decoded.sample_rate, RATE), RATE)

    flac = io.BytesIO()
    soundfile.write(flac, programme(), RATE, format="FLAC", subtype="PCM_24")
    assert abs(lufs(media[name]) - lufs(flac.getvalue())) < 1.0


def test_opus_and_vorbis_in_ogg_decode():
    audio = programme(3.0)
    opus = pyav_media(audio, RATE, "ogg", "libopus")
    vorbis = io.BytesIO()
    soundfile.write(vorbis, audio, RATE, format="OGG", subtype="VORBIS")
    for data in (opus, vorbis.getvalue()):
        decoded = decode(data)
        assert decoded.sample_rate == RATE and abs(decoded.audio.shape[0] - 3 * RATE) < 4096


def test_a_video_without_sound_is_its_own_kind_of_error():
    silent_video = pyav_media(None, RATE, "mp4", None, video=True)
    with pytest.raises(
        NoAudioStream, match=r"^no audio stream \(a .*mp4.* file holding only video streams\)"
    ) as raised:
        decode(silent_video)
    assert raised.value.kind == "no_audio_stream"


@pytest.mark.parametrize(
    "data",
    [b"this is a text file, not audio\n" * 20, bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))],
)
def test_bytes_neither_decoder_reads_are_undecodable(data):
    with pytest.raises(UnreadableAudio, match=r"^not decodable \(libsndfile: .*; FFmpeg: .+\)$") as raised:
        decode(data)
    assert not isinstance(raised.value, NoAudioStream)
    assert raised.value.kind == "undecodable"


def test_damage_midway_ends_the_audio_there(media):
    data = media["aac"]
    decoded = decode(data[: len(data) // 2])
    assert 2.0 * RATE < decoded.audio.shape[0] < 4.0 * RATE


CLIP_DIGEST = """
import hashlib, json, sys, tempfile
from stages.audio.standardize_stage import Standardize
uris = json.loads(sys.argv[1])
with tempfile.TemporaryDirectory() as pool:
    Standardize(pool, 48000, 5.0, -70.0, [16000]).process_part({"part": "p", "uris": uris, \
"fingerprints": None, "errors": None})
    import pyarrow.parquet as pq
    rows = pq.read_table(pool + "/audio/p.parquet").to_pylist()
print(json.dumps({r["clip_id"]: hashlib.sha256(r["flac"]).hexdigest() for r in rows}))
"""


def test_the_same_file_gives_the_same_clip_bytes_in_another_process(media, tmp_path):
    uris = []
    for name in ("m4a", "aac", "webm", "mp4"):
        (tmp_path / f"source.{name}").write_bytes(media[name])
        uris.append(str(tmp_path / f"source.{name}"))
    Standardize(str(tmp_path / "pool"), RATE, 5.0, -70.0, [16000]).process_part(
        {"part": "p", "uris": uris, "fingerprints": None, "errors": None}
    )
    rows = pq.read_table(tmp_path / "pool" / "audio" / "p.parquet").to_pylist()
    here = {r["clip_id"]: hashlib.sha256(r["flac"]).hexdigest() for r in rows}
    assert len(here) == 8  # two clips from each 6 s file
    elsewhere = subprocess.run(
        [sys.executable, "-c", CLIP_DIGEST, json.dumps(uris)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(elsewhere) == here


def test_decoding_twice_gives_identical_samples(media):
    for data in media.values():
        assert decode(data).audio.tobytes() == decode(data).audio.tobytes()
