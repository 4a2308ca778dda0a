import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from stages.audio import loudness
from stages.audio.decode import UnreadableAudio, decode
from stages.audio.packs import decode_flac, encode_flac, quantize_pcm16
from stages.audio.standardize import chunk, resample, to_mono
from stages.audio.standardize_stage import Standardize
from tests.helpers import noise, tone, wav_with_rate
from tests.test_loudness import ebur128_lufs


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
    assert np.all(chunks[-1, real[-1] :] == 0)
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
    [
        (b"", "empty file"),
        (b"this is a text file, not audio\n" * 20, "not decodable"),
        (b"RIFF\x00\x00\x00\x00WAVE", "not decodable"),
    ],
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


def test_an_unrecognised_fragment_is_not_reported_as_a_missing_file():
    buffer = io.BytesIO()
    soundfile.write(buffer, noise(1.0, 16000), 16000, format="MP3")
    with pytest.raises(UnreadableAudio, match=r"not decodable \(libsndfile: format not recognised; FFmpeg: "):
        decode(buffer.getvalue()[:50])


def test_a_header_claiming_a_sub_audio_rate_is_refused():
    with pytest.raises(UnreadableAudio, match="sample rate 1 Hz is below 1000 Hz"):
        decode(wav_with_rate(noise(1.0, 16000), 1))


def bad_files() -> dict[str, bytes]:
    """One file of each way a source fails to give audio."""
    return {
        "zero bytes.wav": b"",
        "no samples.wav": encoded(np.zeros(0, np.float32), 16000),
        "text.ogg": b"not audio\n" * 50,
        "rate one.wav": wav_with_rate(noise(1.0, 16000), 1),
        "single sample.flac": encoded(np.array([0.5], np.float32), 192000, "FLAC"),
    }


def test_error_rows_carry_the_kind_they_were_raised_with(tmp_path):
    files = {**bad_files(), "fine.wav": encoded(tone(1.0, 16000), 16000)}
    rows = part_rows(tmp_path, files)
    assert {name: [r["error_kind"] for r in clips] for name, clips in rows.items()} == {
        "zero bytes.wav": ["empty"],
        "no samples.wav": ["empty"],
        "text.ogg": ["undecodable"],
        "rate one.wav": ["bad_sample_rate"],
        "single sample.flac": ["empty"],
        "fine.wav": [None],
    }


def test_listing_errors_and_unreadable_urls_keep_their_kind(tmp_path):
    stage = Standardize(str(tmp_path / "pool"), 48000, 5.0, -70.0, [16000])
    uris = ["/data/a folder", str(tmp_path / "gone.wav")]
    part = {
        "part": "p",
        "uris": uris,
        "fingerprints": [None, "f"],
        "errors": ["/data/a folder is a folder; use a glob such as /data/a folder/*.wav", None],
        "error_kinds": ["not_a_file", None],
    }
    rows = stage.process_part(part).to_pylist()
    assert [(r["error_kind"], r["error"].split(": ", 1)[1].split(":")[0]) for r in rows] == [
        ("not_a_file", "/data/a folder is a folder; use a glob such as /data/a folder/*.wav"),
        ("unreadable", "cannot read"),
    ]


def part_rows(tmp_path, files: dict[str, bytes], **stage_args) -> dict[str, list[dict]]:
    """Run one part over files written under tmp_path; rows grouped by file name, with each clip's
    stored audio decoded from the part's audio file."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    uris = []
    for name, data in files.items():
        (src / name).write_bytes(data)
        uris.append(str(src / name))
    stage = Standardize(
        str(tmp_path / "pool"),
        **{"sample_rate": 48000, "clip_seconds": 5.0, "silence_lufs": -70.0, "mix_sample_rates": [16000], **stage_args},
    )
    rows = stage.process_part(
        {"part": "p", "uris": uris, "fingerprints": ["f"] * len(uris), "errors": [None] * len(uris)}
    ).to_pylist()
    audio = {
        r["clip_id"]: decode_flac(r["flac"])[0]
        for r in pq.read_table(tmp_path / "pool" / "audio" / "p.parquet").to_pylist()
    }
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        row["audio"] = audio.get(row["clip_id"])
        grouped.setdefault(row["source_uri"].rsplit("/", 1)[-1], []).append(row)
    assert set(grouped) == set(files)
    assert all(row["part_rows"] == len(rows) for row in rows)
    return grouped


def encoded(audio: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_each_bad_file_is_one_error_row_naming_it(tmp_path):
    files = bad_files()
    reasons = {
        "zero bytes.wav": "empty file (0 bytes)",
        "no samples.wav": "audio has no samples",
        "text.ogg": "not decodable (libsndfile: ",
        "rate one.wav": "sample rate 1 Hz is below 1000 Hz",
        "single sample.flac": "audio is too short to keep (1 samples at 192000 Hz",
    }
    rows = part_rows(tmp_path, files)
    for name, reason in reasons.items():
        (row,) = rows[name]
        assert row["error"].startswith(f"{tmp_path / 'src' / name}: {reason}"), row["error"]
        assert row["chunk_index"] == -1 and row["audio"] is None and row["clip_id"].endswith("-error")


def test_awkward_but_usable_files_become_clips(tmp_path):
    broken = tone(6.0, 16000)
    broken[1000:1100] = np.nan
    broken[5000] = np.inf
    broken[7000] = -np.inf
    eight = np.stack([tone(2.0, 16000, amplitude=0.4 if c == 0 else 0.0) for c in range(12)], axis=1)
    wav = encoded(tone(4.0, 16000), 16000)
    flac = encoded(noise(3.0, 16000), 16000, "FLAC")
    files = {
        "nan and inf.wav": encoded(broken, 16000, subtype="FLOAT"),
        "all nan.wav": encoded(np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"),
        "twelve channels.wav": encoded(eight, 16000),
        "eight bit.wav": encoded(tone(2.0, 8000), 8000, subtype="PCM_U8"),
        "hi res.flac": encoded(tone(2.0, 192000), 192000, "FLAC", "PCM_24"),
        "hi res.wav": encoded(tone(2.0, 192000), 192000, subtype="FLOAT"),
        "click.wav": encoded(tone(0.1, 16000), 16000),
        "silence.aiff": encoded(np.zeros(3 * 16000, np.float32), 16000, "AIFF"),
        "too loud.wav": encoded(tone(1.0, 16000, amplitude=1000.0), 16000, subtype="FLOAT"),
        "cut.wav": wav[: 44 + 2 * 16000 * 3],
        "cut.flac": flac[: len(flac) // 2],
    }
    rows = part_rows(tmp_path, files)
    for name, clips in rows.items():
        assert all(c["error"] is None for c in clips), name
        assert all(c["audio"].shape == (240000,) for c in clips), name

    nan_clips = rows["nan and inf.wav"]
    assert len(nan_clips) == 2 and all(np.isfinite(c["lufs"]) and not c["silent"] for c in nan_clips)
    # NaN stretch: 1000..1100 at 16 kHz is 3000..3300 at 48 kHz; the resampler's ringing stays near it.
    assert np.abs(nan_clips[0]["audio"][3030:3270]).max() < 0.05
    assert np.abs(nan_clips[0]["audio"][2400:2900]).max() > 0.25
    (all_nan,) = rows["all nan.wav"]
    assert all_nan["silent"] and all_nan["lufs"] is None and not np.any(all_nan["audio"])

    (twelve,) = rows["twelve channels.wav"]
    assert twelve["source_channels"] == 12
    assert np.abs(twelve["audio"][:96000]).max() == pytest.approx(0.4 / 12, abs=2e-3)

    (eight_bit,) = rows["eight bit.wav"]
    assert eight_bit["source_sample_rate"] == 8000 and eight_bit["duration_s"] == pytest.approx(2.0)
    assert np.abs(eight_bit["audio"]).max() == pytest.approx(0.3, abs=0.02)
    for name in ("hi res.flac", "hi res.wav"):
        (clip,) = rows[name]
        assert clip["source_sample_rate"] == 192000 and clip["duration_s"] == pytest.approx(2.0)
        spectrum = np.abs(np.fft.rfft(clip["audio"][:96000]))
        assert abs(np.argmax(spectrum) * 48000 / 96000 - 440.0) < 1.0

    (click,) = rows["click.wav"]
    assert click["duration_s"] == pytest.approx(0.1) and not click["silent"]
    assert click["lufs"] == pytest.approx(ebur128_lufs(click["audio"], 48000), abs=0.1)
    # A 0.1 s sound in 0.4 s gating blocks reads about 10*log10(0.1/0.4) = -6 dB under its own level.
    steady = loudness.integrated_lufs(tone(1.0, 48000), 48000)
    assert -7.0 < click["lufs"] - steady < -4.0

    (silence,) = rows["silence.aiff"]
    assert silence["silent"] and silence["lufs"] is None and silence["source_format"] == "AIFF"
    (loud,) = rows["too loud.wav"]
    assert loud["peak_dbfs"] == pytest.approx(0.0, abs=1e-3) and np.abs(loud["audio"]).max() <= 1.0
    (cut,) = rows["cut.wav"]
    assert cut["duration_s"] == pytest.approx(3.0, abs=1e-3) and cut["source_duration_s"] == pytest.approx(
        3.0, abs=1e-3
    )
    # libsndfile refuses a FLAC stream cut midway; FFmpeg decodes the frames before the cut.
    (cut_flac,) = rows["cut.flac"]
    assert cut_flac["source_format"] == "FLAC/FLAC" and 0.5 < cut_flac["duration_s"] < 1.5


def test_a_failure_inside_one_file_loses_only_that_file(tmp_path, monkeypatch):
    from stages.audio import standardize

    original = standardize.to_mono

    def to_mono(audio):
        if audio.shape[1] == 3:
            raise MemoryError("no room for three channels")
        return original(audio)

    monkeypatch.setattr(standardize, "to_mono", to_mono)
    files = {
        "a.wav": encoded(tone(7.0, 16000), 16000),
        "b.wav": encoded(tone(1.0, 16000, channels=3), 16000),
        "c.wav": encoded(tone(1.0, 16000), 16000),
    }
    rows = part_rows(tmp_path, files)
    assert [r["chunk_index"] for r in rows["a.wav"]] == [0, 1] and len(rows["c.wav"]) == 1
    (failed,) = rows["b.wav"]
    assert (
        failed["error"]
        == f"{tmp_path / 'src' / 'b.wav'}: standardizing failed (MemoryError: no room for three channels)"
    )
    assert failed["audio"] is None and failed["error_kind"] == "failed"


def test_a_part_has_a_pack_per_mix_rate_that_any_tar_tool_lists(tmp_path):
    """Every clip but error rows (silent ones too) is a `<clip_id>.flac` member at each mix rate,
    under fixed headers; the rows locate each member where tarfile finds it; a rerun writes the same bytes."""
    import subprocess
    import tarfile

    files = {
        "noise.wav": encoded(noise(7.0, 44100, 0.1), 44100),
        "quiet.wav": encoded(np.zeros(16000, np.float32), 16000),
        "text.ogg": b"not audio\n" * 50,
    }
    rows = [r for clips in part_rows(tmp_path, files, mix_sample_rates=[16000, 8000]).values() for r in clips]
    clip_ids = [r["clip_id"] for r in rows if r["error"] is None]
    assert len(clip_ids) == 3 and any(r["silent"] for r in rows)
    first = {}
    for number, rate in enumerate((16000, 8000)):
        pack = tmp_path / "pool" / "audio" / str(rate) / "p.tar"
        first[rate] = pack.read_bytes()
        listed = subprocess.run(
            ["tar", "-tvf", str(pack)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert [line.split()[-1] for line in listed] == [f"{c}.flac" for c in clip_ids]
        assert all(line.startswith("-r--r--r-- 0/0 ") for line in listed)
        with tarfile.open(pack) as tar:
            members = {m.name: m for m in tar}
            for row in (r for r in rows if r["error"] is None):
                at = row["loudness_at_rates"][number]
                member = members[f"{row['clip_id']}.flac"]
                assert at["sample_rate"] == rate and (at["audio_offset"], at["audio_bytes"]) == (
                    member.offset_data,
                    member.size,
                )
                assert (member.mtime, member.mode, member.uid, member.gid, member.uname, member.gname) == (
                    0,
                    0o444,
                    0,
                    0,
                    "",
                    "",
                )
                assert decode_flac(tar.extractfile(member).read())[1] == rate
    assert next(r for r in rows if r["error"]).get("loudness_at_rates") is None
    part_rows(tmp_path, files, mix_sample_rates=[16000, 8000])
    assert all((tmp_path / "pool" / "audio" / str(rate) / "p.tar").read_bytes() == data for rate, data in first.items())


def test_repacking_keeps_the_named_clips_bytes_and_locates_them_anew():
    from stages.audio.packs import pack_clips, repack

    clips = [(f"c{i}", bytes([i]) * (700 * (i + 1))) for i in range(4)]
    pack, ranges = pack_clips(clips)
    assert all(pack[o : o + n] == data for (clip, data), (o, n) in zip(clips, ranges.values()))
    smaller, moved = repack(pack, ["c1", "c3"])
    assert list(moved) == ["c1", "c3"] and smaller == pack_clips([clips[1], clips[3]])[0]
    assert all(smaller[o : o + n] == dict(clips)[clip] for clip, (o, n) in moved.items())
    assert moved["c1"][0] < ranges["c1"][0]
