"""Headers that lie: audio whose header claims far more frames or channels, or a wilder rate, than
the file holds, and images whose header claims enormous dimensions. Each becomes an error row of its
own kind, or is decoded as what it holds, within a bounded memory (measured with tracemalloc, which
sees every numpy and Python allocation): never a worker killed for memory, never a dead run."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile

from stages.audio.standardize_stage import Standardize
from tests.helpers import noise, png

BOUND = 64 * 2**20


def wav(audio: np.ndarray, rate: int = 16000) -> bytearray:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"fmt " and data[36:40] == b"data"  # the canonical 44-byte header
    return data


def claims(
    data: bytearray,
    riff: int | None = None,
    channels: int | None = None,
    rate: int | None = None,
    data_bytes: int | None = None,
) -> bytes:
    if riff is not None:
        data[4:8] = struct.pack("<I", riff)
    if channels is not None:
        data[22:24] = struct.pack("<H", channels)
        data[32:34] = struct.pack("<H", channels * 2)  # block align
        data[28:32] = struct.pack("<I", min(struct.unpack("<I", data[24:28])[0] * channels * 2, 0xFFFFFFFF))
    if rate is not None:
        data[24:28] = struct.pack("<I", rate)
        data[28:32] = struct.pack("<I", min(rate * struct.unpack("<H", data[32:34])[0], 0xFFFFFFFF))
    if data_bytes is not None:
        data[40:44] = struct.pack("<I", data_bytes)
    return bytes(data)


def standardize_one(tmp_path, data: bytes) -> tuple[list[dict], int]:
    path = tmp_path / "lying.wav"
    path.write_bytes(data)
    stage = Standardize(str(tmp_path / "pool"), 48000, 5.0, -70.0, [16000])
    tracemalloc.start()
    try:
        rows = stage.process_part({"part": "p", "uris": [str(path)], "fingerprints": None, "errors": None})
        return rows.to_pylist(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_wav_claiming_four_gigabytes_of_samples_is_decoded_as_what_it_holds(tmp_path):
    data = claims(wav(noise(3.0, 16000, 0.2)), riff=0xFFFFFFFF, data_bytes=0xFFFFFFF0)
    rows, peak = standardize_one(tmp_path, data)
    assert [r["error"] for r in rows] == [None] and rows[0]["source_duration_s"] == 3.0
    assert peak < BOUND, peak >> 20


@pytest.mark.parametrize("channels", [1024, 30000])
def test_a_wav_claiming_thousands_of_channels_is_bounded(tmp_path, channels):
    """libsndfile reads 1024 channels (the 3 s of mono samples become a few frames of many
    channels); more it refuses, and so does FFmpeg: an undecodable row."""
    rows, peak = standardize_one(tmp_path, claims(wav(noise(3.0, 16000, 0.2)), channels=channels))
    assert len(rows) >= 1 and peak < BOUND, peak >> 20
    if rows[0]["error"] is not None:
        assert len(rows) == 1 and rows[0]["error_kind"] == "undecodable", rows[0]
    else:
        assert rows[0]["source_channels"] == channels


@pytest.mark.parametrize(
    "rate, kind",
    [
        (2_000_000_000, "bad_sample_rate"),
        (1_600_000, "bad_sample_rate"),
        (999, "bad_sample_rate"),
        # Past what libsndfile's SF_INFO holds; FFmpeg refuses it too.
        (4_000_000_000, "undecodable"),
    ],
)
def test_a_wav_claiming_a_wild_rate_is_an_error_row(tmp_path, rate, kind):
    rows, _ = standardize_one(tmp_path, claims(wav(noise(1.0, 16000, 0.2)), rate=rate))
    (row,) = rows
    assert row["error_kind"] == kind, row["error"]
    if kind == "bad_sample_rate":
        assert f"sample rate {rate} Hz" in row["error"]


def test_a_low_rate_that_resampling_multiplies_is_cut_in_bounded_memory(tmp_path):
    """16 s of 16 kHz samples claimed as 1 kHz: 256 s at the pool rate, 48-fold the samples."""
    rows, peak = standardize_one(tmp_path, claims(wav(noise(16.0, 16000, 0.2)), rate=1000))
    assert len(rows) == 52 and all(r["error"] is None for r in rows)
    assert peak < BOUND, peak >> 20


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) claims width x height."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        png(100_000, 100_000, 8, 2),  # 10 gigapixels: over Pillow's own limit
        png(15_000, 15_000, 8, 6),  # 225 megapixels of RGBA: over the pipeline's limit only
        jpeg_claiming(65_500, 65_500),
    ],
    ids=["png-10-gigapixels", "png-225-megapixels", "jpeg-4-gigapixels"],
)
def test_an_image_claiming_enormous_dimensions_is_too_large_before_any_pixel_is_decoded(data):
    from stages.images.decoding import BadImage, decode_image

    tracemalloc.start()
    try:
        with pytest.raises(BadImage) as refused:
            decode_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.kind == "too_large" and "decompression-bomb limit" in str(refused.value)
    assert peak < 2**20, peak


def test_an_image_claiming_more_pixels_than_it_holds_under_the_limit_is_undecodable():
    from stages.images.decoding import BadImage, decode_image

    with pytest.raises(BadImage) as refused:
        decode_image(png(4_000, 3_000, 8, 2))
    assert refused.value.kind == "undecodable"
