import io

import numpy as np
import pytest
import soundfile

from stages.standardize import (
    UnreadableAudio,
    chunk,
    decode,
    decode_flac,
    encode_flac,
    quantize_pcm16,
    resample,
    to_mono,
)
from tests.helpers import tone


@pytest.mark.parametrize(
    "seconds, clips, last_real_seconds",
    [(34.0, 7, 4.0), (2.0, 1, 2.0), (5.0, 1, 5.0), (10.0, 2, 5.0), (10.5, 3, 0.5), (0.01, 1, 0.01)],
)
def test_chunk_counts_and_padding(seconds, clips, last_real_seconds):
    rate = 1000
    audio = np.ones(int(round(seconds * rate)), dtype=np.float32)
    chunks, real = chunk(audio, rate, 5.0)
    assert chunks.shape == (clips, 5000)
    assert real[-1] == int(round(last_real_seconds * rate))
    assert all(r == 5000 for r in real[:-1])
    assert np.all(chunks[-1, real[-1]:] == 0)
    assert np.all(chunks[-1, : real[-1]] == 1)
    assert chunks.sum() == audio.size


def test_34_second_file_has_one_second_of_padding():
    chunks, real = chunk(np.ones(34 * 48000, dtype=np.float32), 48000, 5.0)
    assert len(chunks) == 7
    assert (5 * 48000 - real[-1]) / 48000 == 1.0


def test_to_mono_averages_channels():
    stereo = np.stack([np.full(10, 0.5, np.float32), np.full(10, -0.1, np.float32)], axis=1)
    assert np.allclose(to_mono(stereo), 0.2)
    six = np.ones((4, 6), np.float32)
    assert np.allclose(to_mono(six), 1.0)
    assert to_mono(np.ones(5, np.float32)).shape == (5,)


@pytest.mark.parametrize("rate_in, rate_out", [(44100, 48000), (96000, 48000), (8000, 48000), (48000, 16000)])
def test_resample_keeps_length_and_pitch(rate_in, rate_out):
    audio = tone(2.0, rate_in, freq=440.0)
    out = resample(audio, rate_in, rate_out)
    assert abs(out.size - 2.0 * rate_out) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak_hz = np.argmax(spectrum) * rate_out / out.size
    assert abs(peak_hz - 440.0) < 2.0
    assert abs(np.sqrt(np.mean(out[1000:-1000] ** 2)) - 0.3 / np.sqrt(2)) < 0.01


def test_resample_same_rate_is_identity():
    audio = tone(0.5, 16000)
    assert np.array_equal(resample(audio, 16000, 16000), audio)


@pytest.mark.parametrize(
    "fmt, subtype, rate, channels",
    [
        ("WAV", "PCM_16", 44100, 2),
        ("WAV", "PCM_U8", 8000, 1),
        ("WAV", "PCM_24", 96000, 1),
        ("WAV", "FLOAT", 48000, 8),
        ("FLAC", "PCM_16", 22050, 2),
        ("OGG", "VORBIS", 32000, 1),
        ("MP3", "MPEG_LAYER_III", 16000, 1),
        ("AIFF", "PCM_16", 11025, 2),
    ],
)
def test_decode_formats_rates_depths_channels(fmt, subtype, rate, channels):
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(1.0, rate, channels=channels), rate, format=fmt, subtype=subtype)
    decoded = decode(buffer.getvalue())
    assert decoded.sample_rate == rate
    assert decoded.audio.shape[1] == channels
    assert decoded.format == fmt
    # Lossy codecs add priming delay; the length stays within a frame of one second.
    assert abs(decoded.audio.shape[0] - rate) < 2400
    assert 0.15 < np.abs(decoded.audio).max() < 0.45


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty file"), (b"this is a text file, not audio\n" * 20, "not decodable"), (b"RIFF\x00\x00\x00\x00WAVE", "not decodable")],
)
def test_decode_rejects_non_audio(data, reason):
    with pytest.raises(UnreadableAudio, match=reason):
        decode(data)


def test_flac_round_trip_is_exact_pcm16():
    audio = tone(1.0, 48000, amplitude=0.9)
    pcm = quantize_pcm16(audio)
    decoded, rate = decode_flac(encode_flac(pcm, 48000))
    assert rate == 48000
    assert np.array_equal(np.round(decoded * 32768).astype(np.int16), pcm)


def test_quantize_saturates_instead_of_wrapping():
    pcm = quantize_pcm16(np.array([1.5, -1.5, 0.5], np.float32))
    assert pcm.tolist() == [32767, -32768, 16384]
