"""Loudness stored in the pool, checked with an independent meter (libebur128) on decoded audio."""

import tarfile

import numpy as np
import pytest
from pyebur128 import MeasurementMode, R128State, get_loudness_global

from stages.audio import loudness
from stages.audio.packs import decode_flac, quantize_pcm16
from stages.audio.standardize import resample
from stages.audio.standardize_stage import Standardize
from tests.helpers import noise, tone, write_audio


def ebur128_lufs(audio: np.ndarray, rate: int) -> float:
    state = R128State(1, rate, MeasurementMode.MODE_I)
    samples = np.ascontiguousarray(audio, dtype=np.float64)
    state.add_frames(samples, samples.size)
    return get_loudness_global(state)


@pytest.mark.parametrize("amplitude", [0.02, 0.1, 0.5])
def test_integrated_lufs_agrees_with_libebur128(amplitude):
    audio = noise(5.0, 48000, amplitude=amplitude)
    assert loudness.integrated_lufs(audio, 48000) == pytest.approx(ebur128_lufs(audio, 48000), abs=0.1)


def test_digital_silence_has_no_loudness_and_is_silent():
    silent = np.zeros(48000 * 5, np.float32)
    assert loudness.integrated_lufs(silent, 48000) is None
    assert loudness.peak_dbfs(silent) is None
    assert loudness.is_silent(None, -70.0)
    assert loudness.is_silent(-75.0, -70.0)
    assert not loudness.is_silent(-30.0, -70.0)


def test_peak_dbfs():
    assert loudness.peak_dbfs(np.array([0.0, -0.5, 0.25])) == pytest.approx(-6.0206, abs=1e-3)


def test_stored_loudness_matches_decoded_clips_at_pool_and_mix_rates(tmp_path):
    """What the pool stores for each clip is what an independent meter reads on the stored FLAC,
    both at the pool rate and in the pack at each mix rate, which holds the clip resampled."""
    source = write_audio(
        tmp_path / "src" / "mix.wav", np.concatenate([noise(6.0, 44100, 0.2), tone(4.0, 44100, 3000, 0.05)]), 44100
    )
    quiet = write_audio(tmp_path / "src" / "quiet.flac", noise(3.0, 22050, 0.00001), 22050, "FLAC", "PCM_24")
    pool_dir = tmp_path / "pool"
    stage = Standardize(str(pool_dir), 48000, 5.0, -70.0, [16000, 22050])
    rows = stage.process_part(
        {"part": "p", "uris": [str(source), str(quiet)], "fingerprints": ["a", "b"], "errors": [None, None]}
    ).to_pylist()
    from stages.io import storage

    audio = storage.read_parquet(str(pool_dir / "audio" / "p.parquet")).to_pylist()
    flac = {r["clip_id"]: r["flac"] for r in audio}
    packs = {}
    for rate in (16000, 22050):
        with tarfile.open(pool_dir / "audio" / str(rate) / "p.tar") as tar:
            packs[rate] = {m.name: tar.extractfile(m).read() for m in tar}
    loud = [r for r in rows if r["source_uri"] == str(source)]
    assert len(loud) == 2
    for row in loud:
        decoded, rate = decode_flac(flac[row["clip_id"]])
        assert rate == 48000
        assert row["lufs"] == pytest.approx(ebur128_lufs(decoded, 48000), abs=0.1)
        for at in row["loudness_at_rates"]:
            at_rate, rate = decode_flac(packs[at["sample_rate"]][f"{row['clip_id']}.flac"])
            assert rate == at["sample_rate"]
            # The pack holds the stored clip resampled, at 16 bits.
            assert np.array_equal(at_rate, quantize_pcm16(resample(decoded, 48000, rate)) / np.float32(32768))
            # The two meters design the K-weighting filters differently away from 48 kHz.
            assert at["lufs"] == pytest.approx(ebur128_lufs(at_rate, rate), abs=0.3)
            assert at["lufs"] == loudness.integrated_lufs(at_rate, rate)
            assert at["peak_dbfs"] == pytest.approx(20 * np.log10(float(np.abs(at_rate).max())), abs=1e-9)
        assert not row["silent"]
    # Removing the top of the spectrum changes loudness: the per-rate value is not a copy.
    second = loud[1]
    assert abs(second["loudness_at_rates"][0]["lufs"] - second["lufs"]) > 0.5
    (whisper,) = [r for r in rows if r["source_uri"] == str(quiet)]
    assert whisper["silent"] and (whisper["lufs"] is None or whisper["lufs"] < -70)


@pytest.mark.parametrize("seconds", [0.05, 0.2, 0.399])
def test_input_shorter_than_one_block_is_measured_as_padded_to_one_block(seconds):
    audio = noise(seconds, 48000, amplitude=0.2)
    padded = np.concatenate([audio, np.zeros(int(0.4 * 48000) - audio.size, np.float32)])
    assert loudness.integrated_lufs(audio, 48000) == pytest.approx(ebur128_lufs(padded, 48000), abs=0.1)


def highpassed_noise(seconds: float, rate: int, cutoff_hz: float, seed: int = 0) -> np.ndarray:
    spectrum = np.fft.rfft(noise(seconds, rate, 0.3, seed))
    spectrum[np.fft.rfftfreq(int(round(seconds * rate)), 1 / rate) < cutoff_hz] = 0
    return np.fft.irfft(spectrum, int(round(seconds * rate))).astype(np.float32)


@pytest.mark.parametrize(
    "name, audio, audible",
    [
        ("500 Hz tone", tone(5.0, 48000, 500.0, 0.3), True),
        ("broadband noise", noise(5.0, 48000, 0.1), True),
        ("12 kHz tone", tone(5.0, 48000, 12000.0, 0.5), False),
        ("hiss above 9 kHz", highpassed_noise(5.0, 48000, 9000.0), False),
    ],
)
def test_clips_above_the_mix_nyquist_are_not_audible_there(name, audio, audible):
    """Measured as the pool measures (the stored clip resampled as the mixer resamples it)."""
    pool_lufs = loudness.integrated_lufs(audio, 48000)
    at_16k = loudness.integrated_lufs(resample(audio, 48000, 16000), 16000)
    assert pool_lufs is not None and pool_lufs > -30, name
    assert loudness.audible_at_rate(pool_lufs, at_16k, -70.0, 20.0) is audible, (name, pool_lufs, at_16k)


def test_audible_rule_and_table_lookup():
    import pyarrow as pa

    assert not loudness.audible_at_rate(-20.0, None, -70.0, 20.0)
    assert not loudness.audible_at_rate(None, -20.0, -70.0, 20.0)
    assert not loudness.audible_at_rate(-65.0, -71.0, -70.0, 20.0)
    assert loudness.audible_at_rate(-30.0, -50.0, -70.0, 20.0)
    assert not loudness.audible_at_rate(-30.0, -50.5, -70.0, 20.0)
    assert loudness.audible_at_rate(-30.0, -50.5, -70.0, 25.0)
    clips = pa.table(
        {
            "clip_id": ["ok", "lost", "none", "other-rate"],
            "lufs": [-20.0, -10.0, -15.0, -20.0],
            "loudness_at_rates": [
                [{"sample_rate": 16000, "lufs": -21.0, "peak_dbfs": -3.0}],
                [{"sample_rate": 16000, "lufs": -60.0, "peak_dbfs": -40.0}],
                [{"sample_rate": 16000, "lufs": None, "peak_dbfs": None}],
                [{"sample_rate": 22050, "lufs": -20.0, "peak_dbfs": -3.0}],
            ],
        }
    )
    assert loudness.audible_clip_loudness(clips, 16000, -70.0, 20.0) == {"ok": -21.0}
    assert loudness.audible_clip_loudness(clips, 22050, -70.0, 20.0) == {"other-rate": -20.0}
