"""Mixing: gains from stored loudness, the peak ceiling, and the loudness check with an independent
meter (libebur128) on the decoded 16-bit FLAC."""

import numpy as np
import pytest

from stages import loudness
from stages.mix import draw_targets, gains_db, mix_sources
from stages.retrieval import concept_rng
from stages.standardize import decode_flac, encode_flac, quantize_pcm16, resample
from tests.helpers import noise, tone
from tests.test_loudness import ebur128_lufs

RATE = 16000


def test_targets_are_in_range_and_reproducible():
    targets = draw_targets(concept_rng(0, "k", 0, "loudness"), 1000, -27.0, -23.0)
    assert targets.min() >= -27.0 and targets.max() <= -23.0
    assert np.array_equal(targets, draw_targets(concept_rng(0, "k", 0, "loudness"), 1000, -27.0, -23.0))


@pytest.mark.parametrize("target", [-35.0, -27.0, -20.0])
def test_single_source_mix_reads_target_on_an_independent_meter(target):
    clip48 = noise(5.0, 48000, 0.05, seed=3)
    at_rate = resample(clip48, 48000, RATE)
    stored_lufs = loudness.integrated_lufs(at_rate, RATE)
    mix = mix_sources([at_rate], gains_db(np.array([target]), np.array([stored_lufs])), -1.0)
    decoded, rate = decode_flac(encode_flac(quantize_pcm16(mix.audio), RATE))
    assert rate == RATE
    assert ebur128_lufs(decoded, RATE) == pytest.approx(target + mix.mix_gain_db, abs=0.5)


def test_loud_mix_is_scaled_under_the_ceiling_and_gain_recorded():
    sources = [tone(5.0, RATE, 220.0, 0.9), tone(5.0, RATE, 330.0, 0.9)]
    mix = mix_sources(sources, np.array([0.0, 0.0]), -1.0)
    assert mix.mix_gain_db < 0
    assert np.abs(mix.audio).max() <= 10 ** (-1.0 / 20) + 1e-6
    assert mix.peak_dbfs == pytest.approx(-1.0, abs=1e-4)
    unscaled = sources[0].astype(np.float64) + sources[1]
    assert np.allclose(mix.audio, unscaled * 10 ** (mix.mix_gain_db / 20), atol=1e-6)


def test_quiet_mix_is_untouched_and_sums_gained_sources():
    a, b = noise(5.0, RATE, 0.01, 1), noise(5.0, RATE, 0.01, 2)
    mix = mix_sources([a, b], np.array([6.0, -6.0]), -1.0)
    assert mix.mix_gain_db == 0.0
    assert np.allclose(mix.audio, a * 10 ** (6 / 20) + b * 10 ** (-6 / 20), atol=1e-6)


def test_empty_mix_is_rejected():
    with pytest.raises(ValueError):
        mix_sources([], np.array([]), -1.0)


def test_pool_clips_load_at_the_mix_rate_with_their_stored_loudness(tmp_path):
    """The gain computed from the pool's stored loudness at the mix rate lands the decoded clip on
    its target: the mixer's resampling is the one the pool measured."""
    from stages.mix import load_pool_clips
    from stages.standardize import Standardize
    from tests.helpers import write_audio

    source = write_audio(tmp_path / "src.wav", noise(9.0, 44100, 0.2, seed=5), 44100)
    rows = Standardize(str(tmp_path / "pool"), 48000, 5.0, -70.0, [RATE]).process_part(
        {"part": "p0", "uris": [str(source)], "fingerprints": ["f"], "errors": [None]}
    ).to_pylist()
    clips = load_pool_clips(str(tmp_path / "pool"), [(r["clip_id"], "p0") for r in rows], RATE)
    assert set(clips) == {r["clip_id"] for r in rows}
    for row in rows:
        stored = row["loudness_at_rates"][0]
        assert stored["sample_rate"] == RATE
        mix = mix_sources([clips[row["clip_id"]]], gains_db(np.array([-26.0]), np.array([stored["lufs"]])), -1.0)
        assert loudness.integrated_lufs(mix.audio.astype(np.float64), RATE) == pytest.approx(-26.0 + mix.mix_gain_db, abs=0.01)
    with pytest.raises(KeyError, match="not in pool part"):
        load_pool_clips(str(tmp_path / "pool"), [("nope-00000", "p0")], RATE)
