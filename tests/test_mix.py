"""Mixing: gains from stored loudness, the peak ceiling, and the loudness check with an independent
meter (libebur128) on the decoded 16-bit FLAC; pool clips read by byte range from their pack at the
mix rate."""

import tarfile
from pathlib import Path

import numpy as np
import pytest

from stages.audio import loudness
from stages.audio.mixing import ClipLocation, draw_targets, gains_db, load_pool_clips, mix_sources
from stages.audio.packs import decode_flac, encode_flac, quantize_pcm16
from stages.audio.standardize import resample
from stages.audio.standardize_stage import Standardize
from stages.search.choice import concept_rng
from tests.helpers import noise, tone, write_audio
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


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """One part standardized at 48 kHz with a pack at RATE: 8 clips of noise, then 2 of tone."""
    root = tmp_path_factory.mktemp("mix pool")
    sources = [
        write_audio(root / "src" / "noise.wav", noise(40.0, 44100, 0.2, seed=5), 44100),
        write_audio(root / "src" / "tone.wav", tone(9.0, 22050, 880.0, 0.1), 22050),
    ]
    rows = (
        Standardize(str(root / "pool"), 48000, 5.0, -70.0, [RATE])
        .process_part(
            {"part": "p0", "uris": [str(s) for s in sources], "fingerprints": ["a", "b"], "errors": [None, None]}
        )
        .to_pylist()
    )
    return str(root / "pool"), rows


def located(rows: list[dict]) -> list[ClipLocation]:
    return [
        ClipLocation(
            r["clip_id"], r["part"], r["loudness_at_rates"][0]["audio_offset"], r["loudness_at_rates"][0]["audio_bytes"]
        )
        for r in rows
    ]


def test_pool_clips_are_the_audio_whose_loudness_the_pool_stored(pool):
    """What the mixer decodes is exactly what the pool measured at the mix rate (bit for bit), and
    it is the pack member that tarfile finds under the clip's name."""
    pool_dir, rows = pool
    clips, _ = load_pool_clips(pool_dir, located(rows), RATE)
    assert set(clips) == {r["clip_id"] for r in rows} and len(rows) == 10
    with tarfile.open(f"{pool_dir}/audio/{RATE}/p0.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert sorted(members) == sorted(f"{r['clip_id']}.flac" for r in rows)
    for row in rows:
        stored = row["loudness_at_rates"][0]
        audio = clips[row["clip_id"]]
        assert stored["sample_rate"] == RATE and audio.dtype == np.float32 and audio.shape == (5 * RATE,)
        assert np.array_equal(audio, decode_flac(members[f"{row['clip_id']}.flac"])[0])
        assert loudness.integrated_lufs(audio, RATE) == stored["lufs"]
        assert loudness.peak_dbfs(audio) == stored["peak_dbfs"]
        mix = mix_sources([audio], gains_db(np.array([-26.0]), np.array([stored["lufs"]])), -1.0)
        assert loudness.integrated_lufs(mix.audio.astype(np.float64), RATE) == pytest.approx(
            -26.0 + mix.mix_gain_db, abs=0.01
        )


def test_reading_some_clips_reads_their_bytes_not_the_part(pool, monkeypatch):
    """Two clips apart cost their own bytes and tar headers, two neighbours one request; the file
    system is asked for no more than that (its reads recorded below our code)."""
    from fsspec.implementations.local import LocalFileSystem

    pool_dir, rows = pool
    where = located(rows)
    requests = []
    cat_file = LocalFileSystem.cat_file

    def recorded(self, path, start=None, end=None, **kwargs):
        data = cat_file(self, path, start, end, **kwargs)
        requests.append((start, end, len(data)))
        return data

    monkeypatch.setattr(LocalFileSystem, "cat_file", recorded)
    part_bytes = Path(f"{pool_dir}/audio/{RATE}/p0.tar").stat().st_size
    apart = [where[1], where[6]]
    _, read = load_pool_clips(pool_dir, apart, RATE)
    assert read == sum(c.size + 512 for c in apart) == sum(n for _, _, n in requests)
    assert [(start, end) for start, end, _ in requests] == [(c.offset - 512, c.offset + c.size) for c in apart]
    assert read < part_bytes / 3

    requests.clear()
    neighbours = [where[3], where[2]]
    _, read = load_pool_clips(pool_dir, neighbours, RATE)
    assert [(start, end) for start, end, _ in requests] == [(where[2].offset - 512, where[3].offset + where[3].size)]
    assert read == requests[0][2] <= sum(c.size for c in neighbours) + 2 * 512 + 511


def test_a_location_that_is_not_its_clip_or_not_at_the_mix_rate_is_refused(pool, tmp_path):
    pool_dir, rows = pool
    first, second = located(rows)[:2]
    with pytest.raises(ValueError, match=f"pool part p0: .* holds no clip {first.clip_id} at byte {second.offset}"):
        load_pool_clips(pool_dir, [first._replace(offset=second.offset, size=second.size)], RATE)
    with pytest.raises(ValueError, match=f"holds no clip {first.clip_id} at byte {first.offset + 100}"):
        load_pool_clips(pool_dir, [first._replace(offset=first.offset + 100)], RATE)
    # A pack whose clips are at another rate than its folder says.
    other = tmp_path / "pool" / "audio" / "22050"
    other.mkdir(parents=True)
    (other / "p0.tar").write_bytes(Path(f"{pool_dir}/audio/{RATE}/p0.tar").read_bytes())
    with pytest.raises(
        ValueError,
        match=f"pool part p0: clip {first.clip_id} in .* is stored at {RATE} Hz, not at the mix rate 22050 Hz",
    ):
        load_pool_clips(str(tmp_path / "pool"), [first], 22050)
